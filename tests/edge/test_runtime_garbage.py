"""Garbled model files are refused with a named error, never a crash, in
whichever runtime is installed (tflite-runtime does not verify flatbuffers)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.settings import BUNDLED_BASELINE
from shared.errors import ModelRejected
from shared.runtime import TFLiteModel

GOOD = Path(BUNDLED_BASELINE).read_bytes()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, len(GOOD) - 64))
def test_truncated_files_are_refused(cut: int) -> None:
    with pytest.raises(ModelRejected):
        TFLiteModel(GOOD[:cut])


@settings(max_examples=40, deadline=None)
@given(st.binary(max_size=2000))
def test_random_bytes_are_refused(data: bytes) -> None:
    with pytest.raises(ModelRejected):
        TFLiteModel(data)


def test_garbage_with_the_right_identifier_is_refused() -> None:
    header = GOOD[:8]
    with pytest.raises(ModelRejected, match="outside"):
        TFLiteModel(header + b"\xff" * 100)
