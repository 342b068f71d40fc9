"""The demo's reads of its Redis against a real redis-server frozen with SIGSTOP (as a
hung host or a stuck disk leaves it: connections accepted, nothing answered): the
live view shows the outage instead of raising, the reads the result needs wait a
bounded time and then fail in one line, and everything reads again after SIGCONT."""

from __future__ import annotations

import io
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from cloud.demo.fleet import LocalFleet
from cloud.demo.redis_watch import READ_TIMEOUT_S, RedisUnreachable
from cloud.demo.view import live_view
from shared.messages import TrainerStatus
from tests.conftest import RedisServer

pytestmark = pytest.mark.cloud

MODEL = "digits"


class _Workload:
    """What ``LocalFleet`` reads of a workload before it starts anything: its name."""

    name = MODEL


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is frozen, unlike the session's."""
    server = RedisServer(tmp_path / "redis")
    server.workdir.mkdir()
    server.start()
    yield server
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGCONT)  # a failed test must not leave it frozen
    server.stop()


@pytest.fixture
def fleet(tmp_path: Path, server: RedisServer) -> Iterator[LocalFleet]:
    fleet = LocalFleet(tmp_path / "work", _Workload(), Console(), edges=0, seed=0)  # type: ignore[arg-type]
    fleet.connect_redis(server.url)
    fleet.watch.patience_s = 3.0
    yield fleet
    fleet.close()


def freeze(server: RedisServer, sig: signal.Signals = signal.SIGSTOP) -> None:
    assert server.proc is not None
    os.kill(server.proc.pid, sig)


def report(fleet: LocalFleet, accepted: int) -> None:
    assert fleet.redis is not None
    status = TrainerStatus(model=MODEL, consumer="trainer-1", feedback_accepted=accepted)
    fleet.redis.set(fleet.keys.trainer(MODEL), status.to_wire())


def rendered(fleet: LocalFleet) -> str:
    console = Console(record=True, width=140, file=io.StringIO())
    console.print(
        live_view(fleet.headline, {}, {}, fleet.trainer_status(), redis_state=fleet.watch.state)
    )
    return console.export_text()


def test_the_live_view_shows_a_frozen_redis_and_reads_again_after_it(fleet, server):
    report(fleet, accepted=7)
    assert fleet.trainer_status().feedback_accepted == 7  # type: ignore[union-attr]
    assert fleet.watch.state is None
    freeze(server)
    t0 = time.monotonic()
    first = rendered(fleet)
    assert time.monotonic() - t0 < READ_TIMEOUT_S + 1.0  # one short wait, no hidden retries
    time.sleep(1.0)
    text = rendered(fleet)
    assert "Redis unreachable for 0 s" in first, first
    assert "Redis unreachable for" in text and "TimeoutError" in text, text
    assert "Redis unreachable for 0 s" not in text, text  # the count goes on
    # the trainer's last report read stays on screen
    assert "accepted 7" in text, text
    freeze(server, signal.SIGCONT)
    report(fleet, accepted=9)
    text = rendered(fleet)
    assert "unreachable" not in text and "accepted 9" in text, text
    assert fleet.watch.state is None


def test_a_read_the_result_needs_waits_then_fails_in_one_line(fleet, server):
    freeze(server)
    t0 = time.monotonic()
    with pytest.raises(RedisUnreachable) as e:
        fleet.published_versions()
    waited = time.monotonic() - t0
    assert 3.0 <= waited < 3.0 + 2 * READ_TIMEOUT_S + 1.0, waited
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith("Redis did not answer for 3 s while reading the published versions")
    with pytest.raises(RedisUnreachable, match="the trainer's status"):
        fleet.trainer_status(fresh=True)


def test_a_read_the_result_needs_gets_its_answer_once_redis_is_back(fleet, server):
    report(fleet, accepted=4)
    freeze(server)
    threading.Timer(1.5, freeze, (server, signal.SIGCONT)).start()
    assert fleet.trainer_status(fresh=True).feedback_accepted == 4  # type: ignore[union-attr]
    assert fleet.published_versions() == set()


def test_the_drain_does_not_count_the_time_redis_is_frozen(fleet, server, caplog):
    """The trainer takes no feedback while Redis is frozen: a drain of 1 s still sees
    it all once Redis answers again 2 s later, and gives up only after the watch's
    patience."""
    report(fleet, accepted=5)
    freeze(server)
    threading.Timer(2.0, freeze, (server, signal.SIGCONT)).start()
    with caplog.at_level(logging.WARNING, logger="cloud.demo.fleet"):
        fleet.wait_drained(sent=5, timeout=1.0)
    assert "did not drain" not in caplog.text
    freeze(server)
    with pytest.raises(RedisUnreachable, match="while the feedback drained"):
        fleet.wait_drained(sent=6, timeout=1.0)
