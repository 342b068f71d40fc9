"""The export stage's errors."""

from __future__ import annotations

from shared.errors import EdgeloopError


class ExportError(EdgeloopError):
    """The model could not be converted or quantized."""


class NumericCheckError(ExportError):
    """The int8 file loads but is not what the torch model computes (or not all-int8)."""
