"""The size and privacy measures of the structure passes, read from the source with ``ast``: in engine/,
shards/ and kernels/ no function is longer than 100 lines, no module longer than 800 (the synthetic corpus's
data tables aside), and no module imports another package's private (``_name``) helper."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "kernels", "shards")
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 800
DATA_TABLES = {"shards/synthetic/recipes.py"}  # genres as data: tables, not logic


def _sources() -> list[Path]:
    return [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_no_function_is_longer_than_100_lines():
    long = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{_rel(path)}:{node.lineno} {node.name} ({n} lines)")
    assert not long, "functions over 100 lines:\n" + "\n".join(long)


def test_no_module_is_longer_than_800_lines():
    long = [
        f"{_rel(p)} ({n} lines)"
        for p in _sources()
        if _rel(p) not in DATA_TABLES and (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    ]
    assert not long, "modules over 800 lines:\n" + "\n".join(long)


def _package(module: str, is_init: bool) -> str:
    """The dotted package a module belongs to (a package's ``__init__`` belongs to itself)."""
    return module if is_init else module.rpartition(".")[0]


@pytest.mark.parametrize("path", _sources(), ids=_rel)
def test_no_module_imports_another_packages_private_helper(path: Path):
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_init = parts[-1] == "__init__"
    own = _package(".".join(parts[:-1] if is_init else parts), is_init)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module.split(".")[0] not in (*PACKAGES, "registry"):
                continue
            target = (ROOT / node.module.replace(".", "/"))
            theirs = node.module if target.is_dir() else node.module.rpartition(".")[0]
            if theirs == own:
                continue
            private_module = any(p.startswith("_") and not p.startswith("__") for p in node.module.split("."))
            for alias in node.names:
                if private_module or alias.name.startswith("_"):
                    bad.append(f"from {node.module} import {alias.name}")
    assert not bad, f"{_rel(path)} imports private names of another package: {bad}"
