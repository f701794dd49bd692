"""Server-side time of a slider move on the Budget page (target: under 200 ms).

A move reruns the whole script: app.py's frame, then the Budget page, which picks the solution off
the cached frontier, summarises it, and redraws the chain, the layer table and the three frontiers.
AppTest runs exactly that script in this process, so the time of
``at.slider(key="budget").set_value(v).run()`` is the server's work for one move, without the
browser's rendering or the network. Moves alternate between budgets so every run changes the answer.

Usage: .venv/bin/python bench/bench_app.py [--moves N] [--model NAME]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from streamlit.testing.v1 import AppTest  # noqa: E402


def timed(action: object) -> float:
    started = time.perf_counter()
    action()  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=31, help="slider moves to time (default 31)")
    parser.add_argument("--model", default="digits_resnet", help="registry model (default demo)")
    args = parser.parse_args(argv)

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    first_ms = timed(at.run)
    if args.model != "digits_resnet":
        at.selectbox(key="model_name").set_value(args.model)
        at.button(key="use_model").click().run()
    switch_ms = timed(lambda: at.switch_page("pages/budget.py").run())
    if at.exception or not at.slider:
        print(f"the Budget page has no slider for {args.model} (no tables?)", file=sys.stderr)
        return 1
    budgets = [70, 90, 80, 100, 75, 95]
    # first moves: frontier and figure caches warm up; not counted
    for percent in budgets:
        at.slider(key="budget").set_value(percent).run()
    times, answers = [], set()
    for index in range(args.moves):
        percent = budgets[index % len(budgets)]
        times.append(timed(lambda p=percent: at.slider(key="budget").set_value(p).run()))
        assert not at.exception, at.exception[0].value
        answers.add(next(m.value for m in at.metric if m.label == "Predicted latency"))
    quartiles = statistics.quantiles(times, n=4)
    print(
        f"model {args.model}; first run (imports, model build) {first_ms:.0f} ms; switch to "
        f"Budget {switch_ms:.0f} ms"
    )
    print(
        f"slider move: median {statistics.median(times):.1f} ms, quartiles {quartiles[0]:.1f}"
        f"–{quartiles[2]:.1f} ms, min {min(times):.1f}, max {max(times):.1f} over "
        f"{len(times)} moves; {len(answers)} distinct answers shown"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
