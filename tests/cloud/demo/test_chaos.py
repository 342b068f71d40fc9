"""The quick chaos scenario, whole: ``edgeloop demo --scenario chaos --quick --json``.

Its schedule always freezes redis-server for 15 s (what used to end the demo with a
traceback), kills it and brings it back from its AOF, kills the trainer, an edge,
the API and the controller (each restarted by the scenario), cuts an edge off Redis
for a minute and fills its disk while it spools, fills the blob directory across a
round and steps another edge's wall clock an hour. The run must end with exit 0, no
traceback in the demo or in any process's log, and nothing lost.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.demo_runs import DemoRuns

pytestmark = [pytest.mark.slow, pytest.mark.cloud]

SEED = 1


def chaos_args(cwd: Path) -> list[str]:
    return ["--scenario", "chaos", "--seed", str(SEED), "--keep"]


# One of the session's demo runs (tests/demo_runs.py), side by side with another.
@pytest.mark.timeout(1500)
@pytest.mark.demo_run("chaos", chaos_args)
def test_the_quick_chaos_scenario_loses_nothing_and_every_process_comes_back(
    demo_runs: DemoRuns, demo_result: dict[str, Any]
) -> None:
    cwd = demo_runs.cwd("chaos")
    stdout_text, stderr_text = (cwd / "stdout").read_text(), (cwd / "stderr").read_text()
    assert "Traceback" not in stdout_text + stderr_text, stderr_text[-4000:]
    # the demo met the outage (a read failed) and went on
    assert "redis does not answer" in stderr_text, stderr_text[-4000:]
    assert "redis answers again" in stderr_text, stderr_text[-4000:]
    # kept (--keep) for its logs, and left for a failed test's reader
    (workdir,) = (cwd / "tmp").glob("edgeloop-demo-*")
    for log in workdir.glob("*.log"):
        assert "Traceback" not in log.read_text(errors="replace"), log
    result = demo_result
    faults = {(f["kind"], f["target"]): f for f in result["faults"]}
    assert len(faults) == 10, result["faults"]
    freeze = faults[("redis-freeze", "redis")]
    assert freeze["duration"] == 15.0, freeze
    for fault in result["faults"]:
        assert not fault["what"].startswith(("not caused", "skipped")), fault
    for process in ("redis", "trainer", "edge-1", "api", "controller"):
        assert result["restarts"][process] >= 1, result["restarts"]
    assert result["feedback_sent"] > 1000, result
    # a truth whose answer a kill cut may still have been kept and trained
    assert result["feedback_trained"] >= result["feedback_sent"], result
    assert result["feedback_lost"] == 0, result
    assert result["duplicates_trained"] == 0, result
    assert result["failed_requests"] == 0, result
    # one edge kill: the request in flight, and one on the dead keep-alive connection
    assert result["requests_cut_by_kill"] <= 2, result
    assert result["unverified_served"] == 0, result
    assert result["edges_converged"], result
    assert result["done"], result
    shutil.rmtree(workdir, ignore_errors=True)
