"""Docstring examples of the REST API, its clients and the rollout code run."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "cloud.api.app",
    "cloud.api.settings",
    "cloud.cli.client",
    "cloud.cli.rollout",
    "cloud.cli.render.explain",
    "cloud.cli.render.versions",
    "cloud.rollout.rings",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
