"""The Tables page uses what the CLI made (issue 15, item 6): any table directory whose chain is the
model's, typed or picked from those found, and nothing else; the importance settings the CLI has,
with an estimate of their time before anything starts."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.tables import MANIFEST_PATH
from pages._shared.jobs import registry
from tests.app.support import open_page, texts, wait_until

SHIPPED = MANIFEST_PATH.parent


def tables_caption(at: AppTest) -> str:
    """The caption that says which tables the page shows and where they are."""
    return next(c.value for c in at.caption if " tables in " in c.value)


def use_directory(at: AppTest, path: Path | str) -> AppTest:
    at.text_input(key="tables_dir").set_value(str(path))
    at.button(key="use_tables_dir").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    return at


def test_a_typed_directory_of_this_chain_is_used_everywhere(tmp_path: Path) -> None:
    mine = tmp_path / "cli_tables"
    shutil.copytree(SHIPPED / "digits_resnet", mine)  # what `profile`/`importance --out` wrote
    at = open_page("tables")
    assert tables_caption(at).startswith("shipped tables in cached_tables/digits_resnet")
    use_directory(at, mine)
    assert not at.error, at.error[0].value
    assert tables_caption(at).startswith(f"chosen tables in {mine}")
    assert at.success and str(mine) in at.success[0].value
    at.switch_page("pages/budget.py").run()  # the whole app now reads them
    assert not at.exception
    assert "**Tables** · chosen" in texts(at)
    at.switch_page("pages/tables.py").run()
    at.button(key="forget_tables_dir").click().run()  # and back to the shipped ones
    assert tables_caption(at).startswith("shipped tables in cached_tables/digits_resnet")


def test_tables_of_another_network_are_refused_and_the_old_ones_kept(tmp_path: Path) -> None:
    other = tmp_path / "mobilenet_tables"
    shutil.copytree(SHIPPED / "digits_mobilenet", other)
    at = open_page("tables")  # digits_resnet, its shipped tables in use
    before = tables_caption(at)
    use_directory(at, other)
    message = at.error[0].value
    assert "holds tables of another network" in message and "digits_mobilenet" in message
    assert "chain digest" in message and "only tables of this model's chain" in message
    assert tables_caption(at) == before


def a_file(folder: Path) -> Path:
    path = folder / "meta.json"
    path.write_text("{}")
    return path


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda folder: folder, "is not a table directory: it has no latency.csv or importance"),
        (lambda folder: folder / "missing", "does not exist"),
        (a_file, "is a file, not a folder"),
    ],
    ids=["empty folder", "missing", "a file"],
)
def test_what_is_not_a_table_directory_gets_one_line(
    tmp_path: Path, make: Callable[[Path], Path], words: str
) -> None:
    at = open_page("tables")
    before = tables_caption(at)
    use_directory(at, make(tmp_path))
    assert len(at.error) == 1 and words in at.error[0].value, texts(at)
    assert "latency.csv, importance.csv and meta.json" in at.error[0].value  # what is accepted
    assert tables_caption(at) == before


def test_directories_of_this_chain_are_listed_and_can_be_picked() -> None:
    at = open_page("tables")
    found = at.selectbox(key="tables_found").options  # as shown: path · model · importance
    assert any(o.startswith("cached_tables/digits_resnet · digits_resnet") for o in found)
    assert not any("digits_mobilenet" in option for option in found)  # another chain
    at.button(key="use_found_tables").click().run()
    assert not at.exception and not at.error
    assert tables_caption(at).startswith("chosen tables in cached_tables/digits_resnet")


def test_importance_settings_come_with_a_time_estimate_before_starting() -> None:
    at = open_page("tables")
    at.toggle(key="tables_recompute").set_value(True).run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    assert at.radio(key="tables_mode").options == ["finetune", "distortion"]

    def estimate() -> str:
        found = [c.value for c in at.caption if "(an estimate)" in c.value]
        assert len(found) == 1, texts(at)
        return found[0]

    assert "25 steps" in estimate() and "359 images" in estimate()  # core's digits defaults
    at.number_input(key="tables_steps").set_value(7)
    at.number_input(key="tables_eval_images").set_value(100).run()
    assert "7 steps" in estimate() and "100 images" in estimate()
    at.radio(key="tables_mode").set_value("distortion").run()
    assert "steps" not in estimate() and "256 images" in estimate()  # the calibration batch
    assert at.number_input(key="tables_steps").disabled


def test_the_settings_reach_the_tables_job() -> None:
    at = open_page()
    at.number_input(key="model_width").set_value(0.75)  # no tables ship for it: the form shows
    at.button(key="use_model").click().run()
    at.switch_page("pages/tables.py").run()
    at.number_input(key="tables_steps").set_value(3)
    at.number_input(key="tables_eval_images").set_value(50).run()
    at.button(key="compute_tables").click().run()
    assert not at.exception, at.exception[0].value if at.exception else ""
    job = registry().get(at.session_state["jobs"]["tables"])
    assert (job.config["mode"], job.config["steps"], job.config["eval_images"]) == (
        "finetune",
        3,
        50,
    )
    job.cancel.set()
    wait_until(at, lambda _: not job.active)
