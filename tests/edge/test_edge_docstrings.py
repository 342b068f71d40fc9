"""Docstring examples in edge/ run (pytest's doctest collection covers tests/ and shared/ only)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "edge.settings",
    "edge.spool",
    "edge.connections",
    "edge.fallback",
    "edge.sequence",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
