"""Report: the speed model against the measured frontiers shipped in ``cached_tables/``.

``make tables`` times the merged network of every frontier point of every method beside the
BN-folded original (``DIR/frontier_measured.json``). This script reads those measurements (it
times nothing, so it can run any time) and prints, per table and method, how many points the
speed model (:mod:`core.speed`) predicts within 10%, with the median and worst error, for two
variants of the model on the same measurements:

- **in network**: the shipped model, structure costs as timed inside the original network;
- **alone**: the same table with each structure cost replaced by its timing alone (meta.json's
  ``alone_ms``), the model before structure costs were timed in the network.

Run::

    .venv/bin/python bench/frontier_report.py [cached_tables/digits_resnet ...]

It prints markdown for BENCHMARKS.md ("Speed model: predicted vs measured speed-up").
"""

from __future__ import annotations

import copy
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.speed import explained_network_ms, overhead_scale, predict_speed  # noqa: E402
from core.tables import read_meta  # noqa: E402
from core.workflows.frontier import FrontierRow, frontier_rows  # noqa: E402

DEFAULT_TABLES = (
    "cached_tables/digits_resnet",
    "cached_tables/digits_mobilenet",
    "cached_tables/digits_unet",
)
GOAL = 0.10


def main(argv: Sequence[str] | None = None) -> int:
    tables = list(argv if argv is not None else sys.argv[1:]) or list(DEFAULT_TABLES)
    print(report(tables))
    return 0


def report(tables: Sequence[str]) -> str:
    lines = [
        "| table | method | points measured | within 10%, alone | within 10%, in network | "
        "median error | worst error | predicted range | measured range |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    totals = {"points": 0, "alone": 0, "network": 0}
    notes = []
    for directory in tables:
        meta = read_meta(directory)
        alone = alone_meta(meta)
        rows = [row for row in frontier_rows(directory).rows if row.measured is not None]
        notes.append(
            f"{Path(directory).name}: s = {overhead_scale(meta):.2f} in network "
            f"({overhead_scale(alone):.2f} alone); unexplained "
            f"{_pct(meta.get('additivity_unexplained'))}"
        )
        for method in dict.fromkeys(row.method for row in rows):
            chosen = [row for row in rows if row.method == method]
            errors = [_error(row.prediction.speedup, row) for row in chosen]
            errors_alone = [
                _error(predict_speed(alone, row.solution).speedup, row) for row in chosen
            ]
            within = sum(abs(e) <= GOAL for e in errors)
            within_alone = sum(abs(e) <= GOAL for e in errors_alone)
            totals["points"] += len(chosen)
            totals["network"] += within
            totals["alone"] += within_alone
            predicted = [row.prediction.speedup for row in chosen]
            measured = [row.measured.speedup for row in chosen]
            lines.append(
                f"| {Path(directory).name} | {method} | {len(chosen)} | {within_alone} | {within} | "
                f"{_pct(statistics.median(errors))} | {_pct(max(errors, key=abs))} | "
                f"{min(predicted):.2f}–{max(predicted):.2f}× | "
                f"{min(measured):.2f}–{max(measured):.2f}× |"
            )
    lines += [
        "",
        f"In all {totals['network']} of {totals['points']} measured points within 10% with the "
        f"structure costs timed in the network, {totals['alone']} with them timed alone. "
        + "; ".join(notes)
        + ".",
    ]
    return "\n".join(lines)


def alone_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    """``meta`` with every structure cost at its timing alone (``alone_ms``)."""
    alone = copy.deepcopy(dict(meta))
    for row in alone.get("structure_costs") or ():
        if "alone_ms" in row:
            row["latency_ms"] = row["alone_ms"]
    alone["explained_network_ms"] = explained_network_ms(alone)
    return alone


def _error(predicted: float, row: FrontierRow) -> float:
    return predicted / row.measured.speedup - 1


def _pct(value: Any) -> str:
    return f"{value:+.1%}" if isinstance(value, int | float) else "-"


if __name__ == "__main__":
    sys.exit(main())
