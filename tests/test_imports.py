"""The module graph of core/ and pages/ is acyclic, and only the family registry asks for a family.

Both are structural promises of the model-family design (DESIGN.md, "Model families"): a cycle
means two modules each need the other to be understood; a family test outside core/families means
a second copy of the pipeline is growing back. The graph is read with ``ast`` (imports inside
functions count too), so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAMILY_CHECK = re.compile(r"is_unet|is_diffusion|model_kind")
# The app's finetune job and its planning are written once for every family: they call core's
# finetune workflow and the family protocol, never a family's own loop, surgery or merge.
# Page modules that start a core workflow for every family (tables, measure, finetune): they go
# through core.workflows and the family protocol (core.families), never a family's own modules
# nor the pipeline's pieces, so the app holds no second copy of a workflow.
FAMILY_NEUTRAL_PAGES = (
    "pages.finetune",
    "pages._shared.jobs_finetune",
    "pages._shared.finetune_plan",
    "pages._shared.jobs_tables",
    "pages._shared.jobs_measure",
)
FAMILY_INTERNALS = ("core.families.", "core.finetune", "core.surgery", "core.merge")


def _modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for top in ("core", "pages"):
        for path in sorted((ROOT / top).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), package↔child pairs aside."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return [
        c
        for c in components
        if not (len(c) == 2 and (c[0].startswith(c[1] + ".") or c[1].startswith(c[0] + ".")))
    ]


def test_core_and_pages_have_no_import_cycle() -> None:
    modules = _modules()
    edges = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert _cycles(edges) == []


def test_only_the_family_registry_asks_which_family_a_model_is() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{number}"
        for top in ("core", "pages")
        for path in sorted((ROOT / top).rglob("*.py"))
        if "families" not in path.relative_to(ROOT).parts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if FAMILY_CHECK.search(line)
    ]
    assert offenders == []


def _family_internals(name: str, path: Path, modules: dict[str, Path]) -> list[str]:
    """What ``path`` imports of a family's own modules or of the pipeline's pieces."""
    return sorted(
        target
        for target in _imports(name, path, modules)
        if target.startswith(FAMILY_INTERNALS) and target != "core.families.base"
    )


def test_the_job_modules_import_no_family_internals() -> None:
    """Panels (pages/_shared/panels/) are family plug-ins and may; the job modules may not."""
    modules = _modules()
    found = {name: _family_internals(name, modules[name], modules) for name in FAMILY_NEUTRAL_PAGES}
    assert found == dict.fromkeys(FAMILY_NEUTRAL_PAGES, [])


def test_the_family_internals_rule_sees_a_family_import(tmp_path: Path) -> None:
    page = tmp_path / "page.py"
    page.write_text(
        "from core.families import family_for\n"
        "def f():\n"
        "    from core.families.unet.latency import measure_unet_latency\n"
        "    import core.families.classifier.family\n"
        "    from core.merge import merge_model\n"
    )
    found = _family_internals("pages.page", page, _modules())
    assert found == ["core.families.classifier.family", "core.families.unet.latency", "core.merge"]


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "p": {"p.x"}, "p.x": {"p"}}
    assert _cycles(edges) == [["a", "b", "c"]]
