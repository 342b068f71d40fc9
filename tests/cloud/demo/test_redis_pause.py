"""The quick demo rides out its redis-server frozen (SIGSTOP) for 15 s while it serves:
no traceback, exit 0, and not one feedback event lost (the edges spool it, the
drain waits for it)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.demo_runs import RUN_TIMEOUT_S

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


@pytest.mark.timeout(RUN_TIMEOUT_S + 300)
def test_the_quick_demo_rides_out_its_redis_frozen_for_15_s(tmp_path):
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    tmp = tmp_path / "tmp"  # the demo's work dir lands here
    tmp.mkdir()
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.cli.main", "demo", "--quick", "--json"],
            stdout=stdout,
            stderr=stderr,
            env={**os.environ, "TMPDIR": str(tmp)},
            cwd=tmp_path,
        )
    try:
        (redis_pid,) = wait_for(
            "redis-server", lambda: children_named(proc.pid, "redis-server"), proc, 60
        )
        # the edges start once the trainer has published its first version; the drift
        # is due 35 s after they serve: freeze Redis across it, so that the drift
        # waits for Redis to list the versions before it
        wait_for("edges", lambda: list(tmp.glob("edgeloop-demo-*/edge-1.log")), proc, 600)
        time.sleep(30.0)
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            time.sleep(PAUSE_S)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        code = proc.wait(timeout=RUN_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the demo stops everything it started
            proc.wait(timeout=60)
    print(f"the demo took {time.monotonic() - started:.0f} s")
    stdout_text, stderr_text = out.read_text(), err.read_text()
    print(stdout_text.strip().splitlines()[-1] if stdout_text.strip() else "")
    assert code == 0, stderr_text[-4000:]
    assert "Traceback" not in stdout_text + stderr_text, stderr_text[-4000:]
    # the demo met the outage (a read failed) and went on
    assert "redis does not answer" in stderr_text, stderr_text[-4000:]
    assert "redis answers again" in stderr_text, stderr_text[-4000:]
    result = json.loads(stdout_text.strip().splitlines()[-1])
    assert result["feedback_sent"] > 0, result
    assert result["feedback_lost"] == 0, result
    assert result["failed_requests"] == 0, result
    assert result["pre_drift_versions"], result
    assert not list(tmp.glob("edgeloop-demo-*")), "the demo left its work dir behind"
