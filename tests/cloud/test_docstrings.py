"""Docstring examples in cloud/ run (pytest's doctest collection covers tests/ and shared/ only)."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["cloud.datasets", "cloud.models", "cloud.replay", "cloud.ingest", "cloud.validation", "cloud.watermark", "cloud.training", "cloud.tflite_file", "cloud.sparse_update",
           "cloud.evaluation", "cloud.triggers", "cloud.settings"]  # fmt: skip


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
