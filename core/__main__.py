"""The command line: ``python -m core COMMAND ...`` (DESIGN.md, "Contracts").

Every command prints a human summary, or JSON on stdout with ``--json``. A
:class:`~core.errors.LayerMergeError` (bad input) exits with code 2 and one line on stderr; no
traceback is ever shown for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.commands import COMMANDS
from core.errors import LayerMergeError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a single line for usage errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m core",
        description="LayerMerge Studio: depth compression of CNNs by layer pruning and merging.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        sub = command.add_parser(subparsers)
        sub.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
        sub.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = args._command
    try:
        result = command.run(args)
    except LayerMergeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is saved", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(command.format_text(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
