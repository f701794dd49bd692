"""Benchmark: the demo frontier, finetuned test accuracy vs measured speed-up for all three methods.

Run: ``.venv/bin/python bench/demo_frontier.py [options of bench/calibration.py]``

Our own small version of the paper's Tables 1-3 on the digits demo task, and issue 13's
demo-frontier check: for both demo models, at five budgets (fractions of the original table
latency: 0.9, 0.7, 0.5, 0.3, 0.15 unless ``--budgets`` says otherwise) each method's solution
(``layermerge``, ``depth`` = Kim23, ``layer`` = layer pruning only; the default objective and
search) is measured after surgery, after the standard finetune, and for speed side by side with
the BN-folded original; the script prints the table and, per budget, whether LayerMerge at least
matches the better baseline at equal measured speed-up.

This is the five-budget mode of ``bench/calibration.py`` (one implementation; the same cache of
measurements, ``runs/calibration/results.json``, so a solution the calibration measured is not
measured again). Equivalent to::

    .venv/bin/python bench/calibration.py --budgets 0.9,0.7,0.5,0.3,0.15

``--backends torch,onnxruntime`` adds ONNX Runtime's speed-up as a column.
"""

from __future__ import annotations

import sys

from calibration import FIVE_BUDGETS, main


def run(argv: list[str] | None = None) -> int:
    """bench/calibration.py's main with ``--budgets`` defaulting to the five budgets."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--budgets" or a.startswith("--budgets=") for a in args):
        args = ["--budgets", ",".join(f"{b:g}" for b in FIVE_BUDGETS), *args]
    return main(args)


if __name__ == "__main__":
    sys.exit(run())
