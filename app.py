"""LayerMerge Studio: the Streamlit entry point (``streamlit run app.py``).

The entry only navigates. ``main()`` registers the pages with ``st.navigation``, draws the frame every
page shares (the sidebar with the model, tables and solution in use, and a session's first-visit
hint), and runs the chosen page; a :class:`~core.errors.LayerMergeError` raised by a page becomes
one ``st.error`` line, never a traceback.
"""

from __future__ import annotations

import streamlit as st

from core.errors import LayerMergeError
from pages._shared import frame, state, url_state  # noqa: F401  (url_state registers its session hooks)
from pages._shared.messages import explain


def main() -> None:
    st.set_page_config(page_title="LayerMerge Studio", page_icon=":material/layers:", layout="wide")
    page = st.navigation(frame.page_list())
    state.init_session()
    solution_slot = frame.sidebar_frame(page.title)
    frame.first_visit_hint(page.title)
    try:
        with frame.framed():
            page.run()
    except LayerMergeError as exc:
        st.error(explain(exc))
    else:  # the page may have chosen another solution (a page that stops keeps the first one)
        frame.sidebar_solution(solution_slot)


if __name__ == "__main__":
    main()
