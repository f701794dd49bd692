"""The command line: ``python -m core COMMAND ...`` (DESIGN.md, "Contracts").

Every command prints a human summary, or JSON on stdout with ``--json``. Exit codes:

- 0: done.
- 2: bad input: one line on stderr, never a traceback. A :class:`~core.errors.LayerMergeError`,
  or the operating system refusing a write (a full disk, a read-only folder); the mapping is
  :func:`core.errors.user_error_message`, the one place it is decided. Outputs are left as they
  were.
- 130: interrupted: Ctrl-C, or a job that stopped before its end (a finetune whose first Ctrl-C
  stopped it cleanly reports ``"status": "cancelled"`` and its summary, then exits 130). Finished
  work is saved; running the same command again resumes it.
"""

from __future__ import annotations

import argparse
import json
import sys

from core.commands import COMMANDS
from core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, user_error_message

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse with exit code 2 and a single line for usage errors."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m core",
        description="LayerMerge Studio: depth compression of CNNs by layer pruning and merging.",
        epilog="exit codes: 0 done; 2 bad input (one line on stderr); 130 interrupted or "
        "cancelled (work so far saved: run the same command again to resume)",
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
    except KeyboardInterrupt:
        print("interrupted; finished work is saved", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        message = user_error_message(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(command.format_text(result))
    cancelled = isinstance(result, dict) and result.get("status") == "cancelled"
    return EXIT_INTERRUPTED if cancelled else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
