"""One module per CLI command; each exposes ``add_parser``, ``run`` and ``format_text``.

``run(args)`` returns a JSON-able dict (printed with ``--json``); ``format_text`` renders it for
people. Commands only parse arguments and call ``core``.
"""

from __future__ import annotations

from types import ModuleType

from core.commands import (
    bench_cmd,
    chain_cmd,
    compress_cmd,
    finetune_cmd,
    frontier_cmd,
    importance_cmd,
    profile_cmd,
    solve_cmd,
)

__all__ = ["COMMANDS"]

COMMANDS: list[ModuleType] = [
    chain_cmd,
    profile_cmd,
    importance_cmd,
    solve_cmd,
    frontier_cmd,
    finetune_cmd,
    compress_cmd,
    bench_cmd,
]
