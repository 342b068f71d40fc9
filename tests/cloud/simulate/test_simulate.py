"""``edgeloop simulate``: a small simulated fleet against the real cloud (a real
redis-server, the trainer, the API under uvicorn and the controller as processes)
balances its books and rolls out over the whole fleet; bad input is one line and exit 2 with nothing started."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from cloud.cli.main import main
from tests.conftest import RedisServer


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--devices", "0"], "--devices must be at least 1"),
        (["--devices", "3", "--fleets", "4"], "--fleets must be 1..3"),
        (["--devices", "3", "--models", "0"], "--models must be 1..16"),
        (["--devices", "3", "--events", "0"], "--events must be at least 1"),
        (["--devices", "3", "--fleet-prefix", "a:b"], "--fleet-prefix must be"),
    ],
)
def test_bad_input_is_one_line_and_exit_2_with_nothing_started(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = set(Path(tempfile.gettempdir()).glob("edgeloop-simulate-*"))
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and says in err, err
    assert set(Path(tempfile.gettempdir()).glob("edgeloop-simulate-*")) == before


# The whole command on 20 devices takes 40-50 s (the trainer's start and bootstrap):
# make test-benches runs it; make test runs the bad-input cases.
@pytest.mark.slow
@pytest.mark.bench_run
def test_a_small_fleet_balances_its_books(redis_server: RedisServer, tmp_path: Path) -> None:
    devices, events = 20, 10
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud.cli.main",
            "simulate",
            "--devices",
            str(devices),
            "--fleets",
            "1",
            "--events",
            str(events),
            "--redis-url",
            redis_server.url,
            "--fleet-prefix",
            f"simtest{tmp_path.name[-6:].replace('_', '')}",
            "--json",
            "--timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    figures = json.loads(r.stdout.strip().splitlines()[-1])
    # every device reported, every event accepted once, every device on a new version
    assert figures["devices_reported_fleet0"] == devices
    assert figures["devices_listed_fleet0"] == devices
    assert figures["devices_counted_fleet0"] == devices
    assert figures["feedback_accepted"] == figures["feedback_sent"] == devices * events
    assert figures["devices_on_new_version"] == devices
    assert figures["fanout_served"] == devices
    assert figures["refused_downloads"] == 0
    # the first version came whole, the new one as a patch
    assert figures["full_downloads"] == devices and figures["patch_downloads"] == devices
    # a staged rollout (canary, half, all) took the whole fleet to its target
    assert figures["rollout_state"] == "completed" and figures["rollout_stages"] == 3
    assert figures["rollout_devices_on_target"] == devices
    assert figures["books_balance"] is True
    assert 0 <= figures["fanout_p50_s"] <= figures["fanout_p99_s"] < 60
