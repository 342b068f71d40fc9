"""Docstring examples in cloud/ run (pytest's doctest collection covers tests/ and shared/ only)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "cloud.data.datasets",
    "cloud.learning.models",
    "cloud.data.replay",
    "cloud.data.ingest",
    "cloud.data.validation",
    "cloud.data.watermark",
    "cloud.learning.training",
    "cloud.export.tflite_file",
    "cloud.export.grid",
    "cloud.evaluation.gate",
    "cloud.trainer.triggers",
    "cloud.trainer.settings",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
