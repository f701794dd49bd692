"""Run the quick benchmarks one after another (``make bench``); the long ones are listed.

Each script prints a markdown table; BENCHMARKS.md holds the recorded figures and their commands.
The long benchmarks (``bench_tables.py``, ``bench_speedup.py``, ``demo_frontier.py``,
``bench_speed_parts.py``) take from minutes to the better part of an hour on a 2-core machine, so
they are run by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

QUICK = ["bench_dp.py", "bench_chain.py", "bench_app.py"]
LONG = ["bench_tables.py", "bench_speedup.py", "demo_frontier.py", "bench_speed_parts.py"]


def main() -> int:
    here = Path(__file__).resolve().parent
    status = 0
    for script in QUICK:
        print(f"\n### {script}\n", flush=True)
        status |= subprocess.call([sys.executable, str(here / script)])
    print("\nLong benchmarks, run by hand: " + ", ".join(f"bench/{s}" for s in LONG))
    return status


if __name__ == "__main__":
    sys.exit(main())
