"""Writes that survive a power cut: what the edge's model store, seq counter and
feedback spool, and the cloud's blob store and exports stand on.

An edge loses power without warning. A file is therefore either replaced whole
(temp file in the same directory, fsync, ``os.replace``, fsync the directory) or
appended to and fsync'd; a reader never sees half of a replace.

>>> import tempfile
>>> d = Path(tempfile.mkdtemp())
>>> atomic_write(d / "state.json", b"{}")
>>> (d / "state.json").read_bytes()
b'{}'
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; nothing more we can do
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def append_durably(path: Path, data: bytes) -> bool:
    """Append ``data`` to ``path`` and fsync; return True when the file was new.

    A new file also fsyncs its directory, so that the file itself survives.
    """
    created = not path.exists()
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    if created:
        fsync_dir(path.parent)
    return created


def remove_durably(path: Path) -> None:
    """Delete ``path`` (if present) and make the deletion durable."""
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
