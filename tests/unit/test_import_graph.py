"""No import circle among bsud's modules: the graph of who imports whom, read with ``ast``, is acyclic.

Every import counts — one under ``if TYPE_CHECKING:`` or inside a function too: a circle hidden that way is still
two modules that cannot be understood (nor changed) one without the other. An edge goes to the module named
(``from bsud.host import mounts`` → ``bsud.host.mounts``; ``from bsud.config import Layout`` → ``bsud.config``); the
packages a module sits in are not counted (every import of a submodule would otherwise run through them).
"""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "bsud"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def _known(name: str) -> str | None:
    """``name`` or the nearest package or module above it that is bsud's."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name: str) -> set[str]:
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str | None] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {_known(a.name) for a in node.names if a.name.startswith("bsud")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                above = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*above, *([node.module] if node.module else [])])
            if base == "bsud" or base.startswith("bsud."):
                found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else _known(base) for a in node.names}
    return {m for m in found if m is not None and m != name}


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as the path around it, or None (a depth-first search)."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (found := visit(nxt)):
                return found
        on_path.discard(path.pop())
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (found := visit(start)):
            return found
    return None


def test_the_cycle_finder_finds_one():
    assert cycle_in({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle_in({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_resolve_to_modules():
    assert "bsud.host.mounts" in imports_of("bsud.reconcile.execute")
    assert "bsud.errors" in imports_of("bsud.retry")


def test_bsud_has_no_import_circle():
    graph = {name: imports_of(name) for name in MODULES}
    circle = cycle_in(graph)
    assert circle is None, "import circle: " + " → ".join(circle or [])


def test_the_worker_does_not_import_the_daemon():
    """The worker is given a narrow context (bsud.worker.WorkerContext), not the daemon that made it."""
    assert not {m for m in imports_of("bsud.worker") if m in ("bsud.daemon", "bsud.cli", "bsud.sinks")}
