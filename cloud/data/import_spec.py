"""Import specs: a user's function named ``module:function`` or ``path/to/file.py:function``,
as uvicorn names apps.

A model (``cloud.learning.contract``) and a ``py:`` dataset (``cloud.data.sources``)
are both given this way. Every failure is one ``ImportSpecError`` line naming the
spec and what went wrong, because the user reads it before anything has started.

>>> is_import_spec("mypkg.models:build"), is_import_spec("digits")
(True, False)
>>> load_function("math:sqrt", what="function")(9.0)
3.0
>>> load_function("math:nope", what="model")
Traceback (most recent call last):
...
cloud.data.import_spec.ImportSpecError: model 'math:nope': module 'math' has no attribute 'nope'
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from shared.errors import ConfigError


class ImportSpecError(ConfigError):
    """An import spec does not name an importable function."""


def is_import_spec(text: str) -> bool:
    """True for ``module:function`` and ``file.py:function``; zoo names have no colon."""
    head, sep, tail = text.rpartition(":")
    return bool(sep and head and tail)


def function_name(spec: str) -> str:
    """The function part of a spec: ``"pkg.models:build"`` -> ``"build"``."""
    return spec.rpartition(":")[2]


def load_function(spec: str, *, what: str) -> Callable[..., Any]:
    """The callable ``spec`` names; ``what`` ("model", "dataset") words the errors."""
    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ImportSpecError(
            f"{what} {spec!r}: use 'module:function' or 'path/to/file.py:function'"
        )
    module = _load_module(where, f"{what} {spec!r}")
    try:
        found = getattr(module, name)
    except AttributeError:
        raise ImportSpecError(
            f"{what} {spec!r}: module {where!r} has no attribute {name!r}"
        ) from None
    if not callable(found):
        raise ImportSpecError(
            f"{what} {spec!r}: {name!r} is a {type(found).__name__}, not a function"
        )
    return found  # type: ignore[no-any-return]


def _load_module(where: str, context: str) -> ModuleType:
    if where.endswith(".py"):
        return _load_file(Path(where), context)
    try:
        return importlib.import_module(where)
    except ImportError as e:
        raise ImportSpecError(f"{context}: cannot import module {where!r}: {e}") from e
    except Exception as e:  # the user's module raised while importing
        raise ImportSpecError(f"{context}: importing {where!r} failed: {_one_line(e)}") from e


def _load_file(path: Path, context: str) -> ModuleType:
    if not path.is_file():
        raise ImportSpecError(f"{context}: no file {str(path)!r}")
    # A name of its own per file, so that two files called model.py do not collide, and
    # registered before running, so that dataclasses and pickling inside it work.
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]
    name = f"edgeloop_user_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportSpecError(f"{context}: {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # the user's file raised while running
        del sys.modules[name]
        raise ImportSpecError(f"{context}: running {str(path)!r} failed: {_one_line(e)}") from e
    return module


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")
