"""No module of seqattr reaches into another's private names (the import layers are import-linter's job,
run by `make lint`).

A private name (one leading underscore) is free to change with its module; a module that imports one from
another, or reads ``other._name`` off an object it did not define, breaks when it does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import seqattr

PACKAGE = Path(seqattr.__file__).parent


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _defined_names(tree: ast.Module) -> set[str]:
    """Private names a module defines itself: its globals, functions, classes and their attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return {name for name in names if _private(name)}


def private_uses(path: Path) -> list[str]:
    """``file:line name`` for each private name of another seqattr module that ``path`` uses."""
    tree = ast.parse(path.read_text(), str(path))
    own = _defined_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqattr"):
            found += [(node.lineno, alias.name) for alias in node.names if _private(alias.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, node.attr))
        elif (  # getattr(obj, "_name", ...) and the like reach in just the same
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr", "setattr")
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and node.args[1].value not in own
        ):
            found.append((node.lineno, node.args[1].value))
    return [f"{path.relative_to(PACKAGE.parent)}:{line} {name}" for line, name in found]


def _seqattr_private_names() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        names |= _defined_names(ast.parse(path.read_text()))
    return names


def test_no_module_uses_another_modules_private_names():
    # Only names that some seqattr module defines: torch's and transformers' own privates are out of scope.
    ours = _seqattr_private_names()
    uses = [use for path in sorted(PACKAGE.rglob("*.py")) for use in private_uses(path)]
    assert [use for use in uses if use.rsplit(" ", 1)[1] in ours] == []


def test_the_check_finds_a_private_import(tmp_path):
    bad = PACKAGE / "_layering_probe.py"
    try:
        bad.write_text(
            "from seqattr.methods.gradient import _vocab_size\n"
            "x = model._has_logits_to_keep\n"
            "y = getattr(model, '_source_scale', 1)\n"
        )
        found = [use.split(" ")[1] for use in private_uses(bad)]
        assert found == ["_vocab_size", "_has_logits_to_keep", "_source_scale"]
    finally:
        bad.unlink()
