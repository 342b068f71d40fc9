"""The quick demo rides out its redis-server frozen (SIGSTOP) for 15 s while it serves:
no traceback, exit 0, and not one feedback event lost (the edges spool it, the
drain waits for it)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.cloud]

PAUSE_S = 15.0


def children_named(parent: int, name: str) -> list[int]:
    """Pids of ``parent``'s children whose command is ``name`` (from /proc)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited while we looked
            continue
        # pid (comm) state ppid ...: comm may hold spaces, so split after its ')'
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if ppid == parent and comm == name:
            pids.append(int(entry.name))
    return pids


def wait_for(what: str, ready, proc: subprocess.Popen[bytes], timeout: float):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not (value := ready()):
        assert proc.poll() is None, f"the demo exited (code {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout:.0f} s"
        time.sleep(0.5)
    return value


def freeze_redis(proc: subprocess.Popen[bytes], tmp: Path) -> None:
    """Once the edges serve, wait 30 s, then freeze the demo's redis-server for
    PAUSE_S: the drift is due 35 s after the edges serve, so the pause spans it and the
    drift waits for Redis to list the versions before it."""
    (redis_pid,) = wait_for(
        "redis-server", lambda: children_named(proc.pid, "redis-server"), proc, 60
    )
    wait_for("edges", lambda: list(tmp.glob("edgeloop-demo-*/edge-1.log")), proc, 600)
    time.sleep(30.0)
    os.kill(redis_pid, signal.SIGSTOP)
    try:
        time.sleep(PAUSE_S)
    finally:
        os.kill(redis_pid, signal.SIGCONT)


# One of the session's demo runs (tests/demo_runs.py), side by side with another.
@pytest.mark.timeout(1500)
@pytest.mark.demo_run("redis-frozen", lambda cwd: [], freeze_redis)
def test_the_quick_demo_rides_out_its_redis_frozen_for_15_s(demo_runs, demo_result):
    cwd = demo_runs.cwd("redis-frozen")
    stdout_text, stderr_text = (cwd / "stdout").read_text(), (cwd / "stderr").read_text()
    assert "Traceback" not in stdout_text + stderr_text, stderr_text[-4000:]
    # the demo met the outage (a read failed) and went on
    assert "redis does not answer" in stderr_text, stderr_text[-4000:]
    assert "redis answers again" in stderr_text, stderr_text[-4000:]
    result = demo_result
    assert result["feedback_sent"] > 0, result
    assert result["feedback_lost"] == 0, result
    assert result["failed_requests"] == 0, result
    assert result["pre_drift_versions"], result
    assert not list((cwd / "tmp").glob("edgeloop-demo-*")), "the demo left its work dir behind"
