"""How each fault of the schedule is really caused, on the demo's own processes.

- ``redis-freeze``: SIGSTOP to redis-server, SIGCONT after the fault's duration.
- ``redis-kill``: SIGKILL to redis-server; the supervisor starts it again on the same
  port and directory, and it loads its AOF.
- ``kill``: SIGKILL to the target's whole process group (a crash, no clean-up), at
  its time, or at the first moment after it that a new model file lands in the blob
  directory (the trainer is then inside a publish: the file is written, the version
  not yet registered) or that the fleet's target changes (an edge is then
  fetching, verifying or installing it).
- ``cut``: the edge's Redis connection goes through ``StallProxy``; it drops every
  byte for the fault's duration, then breaks the connections it starved.
- ``clock-step``: the edge runs with ``clockshift.so`` preloaded (``clock.py``): its
  wall clock jumps an hour ahead, and back after the fault's duration.
- ``disk-full``: the edge's state directory, or the cloud's blob directory, is a
  small tmpfs; a filler file takes every free byte for the fault's duration.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cloud.demo.chaos.disks import fill
from cloud.demo.chaos.schedule import CLOCK_STEP_S, Fault
from cloud.demo.services import Child
from cloud.demo.stall_proxy import StallProxy

logger = logging.getLogger(__name__)

#: How long a kill waits for its moment (a publish, an install) before it strikes anyway.
MOMENT_WAIT_S = 60.0


@dataclass
class Targets:
    """What the faults act on; filled by the scenario as it starts the fleet."""

    child: Callable[[str], Child]
    blob_dir: Path
    target_sha: Callable[[], str | None]
    proxy: StallProxy | None = None
    clock_file: Path | None = None
    #: the directories a disk-full fault fills (tmpfs), by target
    disks: dict[str, Path] = field(default_factory=dict)


def inject(fault: Fault, targets: Targets, stop: Callable[[], bool]) -> str:
    """Cause ``fault`` and, for one with a duration, end it; what happened, for the log.
    ``stop()`` true ends a fault's wait early (the run is over)."""
    if fault.kind == "redis-freeze":
        pid = targets.child("redis").proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            _sleep(fault.duration, stop)
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"redis-server (pid {pid}) frozen {fault.duration:.0f} s"
    if fault.kind == "redis-kill":
        pid = targets.child("redis").proc.pid
        os.kill(pid, signal.SIGKILL)
        return f"redis-server (pid {pid}) killed"
    if fault.kind == "kill":
        moment = _wait_for_moment(fault, targets, stop)
        child = targets.child(fault.target)
        pid = child.proc.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        return f"{fault.target} (pid {pid}) killed {moment}"
    if fault.kind == "cut":
        if targets.proxy is None:
            return "skipped: no proxy"
        targets.proxy.cut.set()
        try:
            _sleep(fault.duration, stop)
        finally:
            targets.proxy.heal()
        return f"{fault.target} cut off from Redis {fault.duration:.0f} s"
    if fault.kind == "clock-step":
        if targets.clock_file is None:
            return "skipped: no C compiler to build clockshift.so"
        targets.clock_file.write_text(f"{CLOCK_STEP_S}\n")
        try:
            _sleep(fault.duration, stop)
        finally:
            targets.clock_file.write_text("0\n")
        return f"{fault.target}'s clock +{CLOCK_STEP_S} s for {fault.duration:.0f} s, then back"
    if fault.kind == "disk-full":
        disk = targets.disks.get(fault.target)
        if disk is None:
            return "skipped: no tmpfs (mount refused)"
        filler = disk / "filler"
        log = targets.child("trainer").log_path
        refused = _count(log, "No space left")
        fill(filler)
        try:
            _sleep(fault.duration, stop)
        finally:
            filler.unlink(missing_ok=True)
        what = f"{disk.name} full {fault.duration:.0f} s"
        if fault.target == "blobs":  # did a round try to publish into it?
            what += f"; rounds refused by it: {_count(log, 'No space left') - refused}"
        return what
    raise ValueError(f"unknown fault {fault.kind!r}")


def _wait_for_moment(fault: Fault, targets: Targets, stop: Callable[[], bool]) -> str:
    if fault.moment == "at":
        return "at its time"
    deadline = time.monotonic() + MOMENT_WAIT_S
    if fault.moment == "publish":
        # versions are files in shard folders, written through a temp file beside them
        before = set(targets.blob_dir.rglob("*"))
        while time.monotonic() < deadline and not stop():
            if set(targets.blob_dir.rglob("*")) - before:
                return "during a publish (its file written)"
            time.sleep(0.01)
    else:
        before_sha = targets.target_sha()
        while before_sha is None and time.monotonic() < deadline and not stop():
            time.sleep(0.05)  # Redis does not answer: the target before is not known yet
            before_sha = targets.target_sha()
        while time.monotonic() < deadline and not stop():
            if targets.target_sha() not in (None, before_sha):
                time.sleep(0.1)  # the announcement reaches the edge; it fetches
                return "0.1 s after the target changed (the edge fetching or installing it)"
            time.sleep(0.05)
    return f"at its time + {MOMENT_WAIT_S:.0f} s (no {fault.moment} came)"


def _sleep(seconds: float, stop: Callable[[], bool]) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop():
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))


def _count(path: Path, text: str) -> int:
    try:
        return path.read_text(errors="replace").count(text)
    except OSError:
        return 0
