"""The dependency rules of ARCHITECTURE.md, read from the source with ``ast`` (nothing is imported):
engine -> shards, kernels, registry; kernels/ and shards/ never import engine (nor each other); no import
cycles among our packages -- counting the imports made by name at run time (``importlib.import_module("...")``,
tables of module names such as ``engine/cli.py``'s ``COMMANDS``)."""

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


def _named_modules(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """Our modules named by a string literal anywhere in ``tree`` (``importlib.import_module("engine.x")``, a
    ``{"cmd": "engine.x"}`` table): imported by name at run time, so an edge wherever the literal stands. Only
    dotted names count: a bare ``"shards"`` is as likely a manifest key as the package."""
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value
        and node.value in modules
    }


def _imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool) -> set[str]:
    """Our modules that ``name`` imports: every import statement, or only those that run at import time
    (module level, outside functions and ``if TYPE_CHECKING``), and in both cases the modules it names in string
    literals (:func:`_named_modules`). ``from pkg import sub`` counts as ``pkg.sub`` when ``sub`` is a module,
    else as ``pkg``; the implicit import of a parent package is not an edge."""
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
    found |= _named_modules(tree, modules)
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


def _cycles(modules: dict[str, Path]) -> list[list[str]]:
    """The import cycles among ``modules`` (import-time imports and modules named in strings), each as a path
    that ends where it starts."""
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
    return cycles


def test_no_import_cycles_among_our_packages():
    cycles = _cycles(_modules())
    assert not cycles, "import cycles (registration belongs in the package __init__):\n" + "\n".join(
        " -> ".join(c) for c in cycles
    )


def test_the_graph_reader_sees_the_imports_it_must_judge():
    """The checks above would pass vacuously if the reader missed imports: pin a few known edges."""
    modules = _modules()
    assert "kernels.functional" in _imports("kernels.features", modules["kernels.features"], modules, True)
    assert "shards.audio" in _imports("shards.ingest", modules["shards.ingest"], modules, True)
    assert "registry" in _imports("shards.layouts", modules["shards.layouts"], modules, True)
    assert "engine.config" in _imports("engine.train.config", modules["engine.train.config"], modules, True)
    # modules imported by name at run time: the command table, the pretrained converters
    assert "engine.train.cli" in _imports("engine.cli", modules["engine.cli"], modules, True)
    assert "engine.pretrained.musicnn" in _imports("engine.pretrained", modules["engine.pretrained"], modules, True)


def test_a_cycle_through_a_module_named_by_string_is_a_cycle(tmp_path):
    """``importlib.import_module("...")`` and a table of module names close a cycle as an import does."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "table.py").write_text('TABLE = {"x": "pkg.command"}\n')
    (pkg / "lazy.py").write_text('import importlib\n\ndef load():\n    return importlib.import_module("pkg.command")\n')
    (pkg / "command.py").write_text("from pkg.table import TABLE\nfrom pkg.lazy import load\n")
    modules = {"pkg": pkg / "__init__.py", **{f"pkg.{n}": pkg / f"{n}.py" for n in ("table", "lazy", "command")}}
    cycles = {" -> ".join(c) for c in _cycles(modules)}
    assert cycles == {"pkg.command -> pkg.lazy -> pkg.command", "pkg.command -> pkg.table -> pkg.command"}
