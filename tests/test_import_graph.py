"""The dependency rules of ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported):
engine -> shards, kernels, registry; kernels/ and shards/ never import engine (nor each other); no import
cycles among our packages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "registry", "shards")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """Our modules that ``name`` imports: every import statement, or only those that run at import time
    (module level, outside functions and ``if TYPE_CHECKING``). ``from pkg import sub`` counts as ``pkg.sub``
    when ``sub`` is a module, else as ``pkg``; the implicit import of a parent package is not an edge."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    found.add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                for alias in node.names:  # a submodule, or a name defined in ``mod`` itself
                    sub = f"{mod}.{alias.name}"
                    found.add(sub if sub in modules else mod)
            elif isinstance(node, ast.If) and _is_type_checking(node):
                if not top_level_only:
                    visit(node.body)
                visit(node.orelse)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if not top_level_only:
                    visit(node.body)
            elif isinstance(node, ast.ClassDef):
                visit(node.body)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):  # try / with / for / if at import time
                    children = getattr(node, field, None)
                    if isinstance(children, list):
                        visit([c for c in children if isinstance(c, ast.stmt)] + [
                            s for h in children if isinstance(h, ast.ExceptHandler) for s in h.body
                        ])

    visit(tree.body)
    return {m for m in found if m in modules}


def test_kernels_and_shards_never_import_engine_or_each_other():
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        top = name.split(".")[0]
        if top not in ("kernels", "shards", "registry"):
            continue
        allowed = {top, "registry"}
        for dep in sorted(_imports(name, path, modules, top_level_only=False)):
            if dep.split(".")[0] not in allowed:
                offenders.append(f"{name} imports {dep}")
    assert not offenders, "dependencies must point one way (engine -> shards, kernels):\n" + "\n".join(offenders)


def test_no_import_cycles_among_our_packages():
    modules = _modules()
    graph = {name: _imports(name, path, modules, top_level_only=True) - {name} for name, path in modules.items()}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                dfs(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    assert not cycles, "import cycles (registration belongs in the package __init__):\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_the_graph_reader_sees_the_imports_it_must_judge():
    """The checks above would pass vacuously if the reader missed imports: pin a few known edges."""
    modules = _modules()
    assert "kernels.functional" in _imports("kernels.features", modules["kernels.features"], modules, True)
    assert "shards.audio" in _imports("shards.ingest", modules["shards.ingest"], modules, True)
    assert "registry" in _imports("shards.layouts", modules["shards.layouts"], modules, True)
    assert "engine.config" in _imports("engine.train", modules["engine.train"], modules, True)
