"""A wall clock one process sees stepped: ``clockshift.so``, built from ``clockshift.c``.

libfaketime (Debian's 0.9.10) was the first choice; under it a Python process's
``time.sleep`` failed with EINVAL, and with ``FAKETIME_DONT_FAKE_MONOTONIC=1`` the
monotonic clock was shifted anyway and ``threading.Event.wait`` hung. A real clock
step moves CLOCK_REALTIME only, so the shim shifts that one and leaves timeouts on
the monotonic clock alone.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("clockshift.c")


def build(workdir: Path) -> Path | None:
    """Compile the shim into ``workdir``; None (logged) without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        logger.warning("no C compiler: the clock-step fault is skipped")
        return None
    out = workdir / "clockshift.so"
    done = subprocess.run(
        [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-ldl"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        logger.warning("clockshift.so did not build: %s", done.stderr.strip()[-500:])
        return None
    return out


def env_for(shim: Path, offset_file: Path) -> dict[str, str]:
    """The environment that starts a process on the shifted clock (offset 0 for now)."""
    offset_file.write_text("0\n")
    return {"LD_PRELOAD": str(shim), "CLOCKSHIFT_FILE": str(offset_file)}
