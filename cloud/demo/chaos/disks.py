"""Small file systems the chaos scenario (and the tests of its faults) can fill: a
tmpfs mounted where a process keeps its state, and a filler that takes its last byte.
Standard library only: the edge-only test environment uses it too."""

from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path


def mount_tmpfs(path: Path, size: int) -> str | None:
    """Mount a tmpfs of ``size`` bytes at ``path`` (made if missing): None once mounted,
    else why not (mount needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else done.stderr.strip() or "mount refused"


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write zeros to ``path`` until its file system is full; the bytes written."""
    written = 0
    block = b"\0" * (64 * 1024)
    with contextlib.suppress(OSError), path.open("wb", buffering=0) as f:
        while True:
            written += f.write(block) or 0
    # the last partial block: fill to the byte
    with contextlib.suppress(OSError), path.open("ab", buffering=0) as f:
        while True:
            written += f.write(b"\0" * 512) or 0
    return written
