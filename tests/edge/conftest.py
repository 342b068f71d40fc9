"""Fixtures for the edge tests: tensor models made by the cloud's exporter.

Edge tests use the real redis-server, signing keys, settings, daemons that stop
at teardown and their served API (tests/conftest.py, tests/serving.py) and the
real TFLite runtime; nothing here may import torch or ``cloud`` at import time.
The tensor models (``tensor_models``) are made once per session, and the tests
that use them skip where torch is not installed (the edge-only run).
"""

from __future__ import annotations

import pytest
from tensor_models import TensorModel

# --doctest-modules would import this file as a module named "conftest", which
# collides with the other test folders' conftest.py; it has no examples anyway.
collect_ignore = ["conftest.py"]


@pytest.fixture(scope="session")
def image_model() -> TensorModel:
    """The depthwise CNN over 32x32x3 uint8 frames, exported once per session."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import image_model

    return image_model()


@pytest.fixture(scope="session")
def regression_model() -> TensorModel:
    """The regression MLP over [32, 4] float32 windows, exported once per session."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import regression_model

    return regression_model()


@pytest.fixture(scope="session")
def tabular_model() -> TensorModel:
    """The MLP over 12 float32 columns (a file that can be resized to a batch)."""
    pytest.importorskip("torch", reason="exporting a model needs torch (not in an edge install)")
    from tensor_models import tabular_model

    return tabular_model()
