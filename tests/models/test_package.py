"""The ``models`` package lists its public names three times (for type checkers, for lazy loading, and
in ``__all__``); the three lists must agree, and every name must load."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import models


def _type_checking_imports() -> dict[str, set[str]]:
    tree = ast.parse(Path(models.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    out: dict[str, set[str]] = {}
    for node in block.body:
        assert isinstance(node, ast.ImportFrom) and node.module is not None
        out.setdefault(node.module, set()).update(alias.name for alias in node.names)
    return out


def test_lazy_names_match_all_and_type_checking_imports() -> None:
    lazy = {module: set(names) for module, names in models._LAZY.items()}
    assert lazy == _type_checking_imports()
    assert sorted(models.__all__) == sorted(name for names in lazy.values() for name in names)


def test_every_public_name_loads_from_its_module() -> None:
    for module, names in models._LAZY.items():
        for name in names:
            assert getattr(models, name) is getattr(importlib.import_module(module), name)
