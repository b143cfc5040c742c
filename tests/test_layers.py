"""The layering rule: the core (every module of llamactl outside llamactl/cli/) never
imports the CLI, and the core's modules do not import each other in a cycle. Read from
the source with ast (imports inside functions count too), so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "llamactl"
CLI = "llamactl.cli"
ENTRY_POINTS = {"llamactl.__main__"}  # `python -m llamactl`: it runs the CLI, and nothing else


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The llamactl modules that `name` imports: `from pkg import x` names pkg.x when that
    is a module, else pkg."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_package else 0)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "llamactl" or t.startswith("llamactl."))
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _is_cli(name: str) -> bool:
    return name == CLI or name.startswith(CLI + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_sees_the_imports_it_must():
    # the reader itself: `chat` imports the REPL inside its function, `python -m llamactl`
    # imports the app; if this fails the tests below prove nothing
    graph = _graph()
    assert "llamactl.cli.repl" in graph["llamactl.cli.chat"]
    assert "llamactl.cli.app" in graph["llamactl.__main__"]
    assert "llamactl.chat.conversation" in graph["llamactl.cli.repl"]
    assert len(graph) > 30


def test_relative_imports_resolve(tmp_path):
    pkg = tmp_path / "llamactl" / "sub"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import a\nfrom .a import x\n")
    (pkg / "a.py").write_text("from ..cli import output\nfrom .. import errors\n")
    known = {"llamactl.sub", "llamactl.sub.a", "llamactl.cli.output", "llamactl.errors"}
    assert _imports("llamactl.sub", pkg / "__init__.py", known) == {"llamactl.sub.a"}
    assert _imports("llamactl.sub.a", pkg / "a.py", known) == {"llamactl.cli.output", "llamactl.errors"}


def test_no_module_outside_cli_imports_the_cli():
    offenders = {name: sorted(t for t in targets if _is_cli(t))
                 for name, targets in _graph().items()
                 if not _is_cli(name) and name not in ENTRY_POINTS}
    offenders = {name: targets for name, targets in offenders.items() if targets}
    assert offenders == {}, f"the core imports the CLI: {offenders}"


def test_the_core_has_no_import_cycle():
    core = {name: {t for t in targets if not _is_cli(t)}
            for name, targets in _graph().items() if not _is_cli(name)}
    assert _cycles(core) == [], "import cycles in the core"


def test_cycles_are_found():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
