"""Docstring examples in cloud/ run (pytest's doctest collection covers tests/ and shared/ only).

The modules are found by their source, not listed: a new example runs without
anyone remembering to add its module here, and a moved module is followed.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import cloud

CLOUD = Path(cloud.__file__).resolve().parent


def modules_with_examples() -> list[str]:
    names = []
    for path in sorted(CLOUD.rglob("*.py")):
        if ">>>" in path.read_text(encoding="utf-8"):
            parts = path.relative_to(CLOUD.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = modules_with_examples()


def test_the_examples_are_found():
    # the stages whose examples must never silently drop out of the run
    for name in ("cloud.data.datasets", "cloud.export.tflite_file", "cloud.api.app"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
