"""The feedback uplink under the chaos scenario's faults, each alone: its disk full
while Redis is down, and the process killed (-9) once it said an event was kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from helpers import stream_events

from cloud.demo.chaos.disks import fill, mount_tmpfs, unmount
from edge.connections import FleetMember
from edge.uplink import FeedbackUplink, UplinkPolicy
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent
from shared.retry import Backoff
from tests.conftest import RedisServer
from tests.serving import Signing, wait_for

X = [float(i % 17) for i in range(64)]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs (root only: skipped where mount is refused)."""
    path = tmp_path / "state"
    refused = mount_tmpfs(path, 4 << 20)
    if refused is not None:
        pytest.skip(f"cannot mount a tmpfs here: {refused}")
    yield path
    unmount(path)


def events(up: FeedbackUplink, n: int) -> list[tuple[str, bytes]]:
    out = []
    for i in range(n):
        ev = FeedbackEvent(
            event_id=up.new_event_id(), device_id="pi-1", model="digits", x=X, label=i % 10
        )
        out.append((ev.event_id, up.hand_over(ev)[1]))
    return out


@pytest.mark.timeout(60)
def test_a_full_disk_while_redis_is_down_keeps_feedback_in_memory_and_loses_none(
    small_disk: Path, redis_server: RedisServer, redis_url: str, keys: FleetKeys
) -> None:
    member = FleetMember(redis_url, keys, "pi-1", "digits")
    policy = UplinkPolicy(flush_ms=5.0, backoff=Backoff(base=0.05, cap=0.2))
    up = FeedbackUplink(member, "e0", small_disk, policy)
    up.start()
    try:
        redis_server.stop()
        fill(small_disk / "filler")
        sent = events(up, 40)
        time.sleep(0.5)  # the sender tried Redis and the spool, and failed both
        assert up.dropped == 0 and up.spooled == 0
        assert not any(up.kept(line) for _, line in sent)  # held in memory only
        (small_disk / "filler").unlink()
        wait_for(lambda: all(up.kept(line) for _, line in sent), timeout=10)
        assert up.spooled == 40  # the spool took them once it could
        redis_server.start()
        assert up.flush(timeout=10)
    finally:
        up.close(timeout=2)
    client = redis.Redis.from_url(redis_url)
    got = [e["event_id"] for e in stream_events(client, keys.feedback_of("digits"))]
    client.close()
    assert got == [event_id for event_id, _ in sent]  # all of them, once, in order
    assert up.dropped == 0


KILLED = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from edge.connections import FleetMember
    from edge.uplink import FeedbackUplink, UplinkPolicy
    from shared.keys import FleetKeys
    from shared.messages import FeedbackEvent

    url, state, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    up = FeedbackUplink(FleetMember(url, FleetKeys("test"), "pi-1", "digits"), "e0", state,
                        UplinkPolicy(flush_ms=5.0))
    up.start()
    for i in range(n):
        ev = FeedbackEvent(event_id=up.new_event_id(), device_id="pi-1", model="digits",
                           x=[1.0] * 64, label=i % 10)
        _, line = up.hand_over(ev)
        while not up.kept(line):
            time.sleep(0.001)
        print(ev.event_id, flush=True)  # the edge's 202: the event is kept
    time.sleep(60)
    """
)


@pytest.mark.timeout(60)
def test_an_uplink_killed_after_it_kept_an_event_loses_none_of_them(
    tmp_path: Path, redis_url: str
) -> None:
    """kill -9 at a random moment of a stream of events: every event it said was kept
    (what ``feedback_ack = "kept"`` answers 202 on) is in the stream."""
    keys = FleetKeys("test")
    with subprocess.Popen(
        [sys.executable, "-c", KILLED, redis_url, str(tmp_path), "100000"],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    ) as proc:
        assert proc.stdout is not None
        kept = [proc.stdout.readline().decode().strip() for _ in range(100)]
        os.kill(proc.pid, signal.SIGKILL)
        kept += [line.decode().strip() for line in proc.stdout.read().splitlines()]
    client = redis.Redis.from_url(redis_url)
    got = {e["event_id"] for e in stream_events(client, keys.feedback_of("digits"))}
    client.close()
    assert kept and set(kept) <= got, sorted(set(kept) - got)[:5]


@pytest.mark.timeout(60)
def test_an_edge_started_on_a_full_disk_exits_2_in_one_line(
    small_disk: Path, tmp_path: Path, redis_url: str, signing: Signing
) -> None:
    """What it cannot survive ends in one line and a non-zero code, for its supervisor
    (systemd, the demo's process group) to start it again later."""
    public_key = signing.public_key
    fill(small_disk / "filler")
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'device_id = "pi-full"\nredis_url = "{redis_url}"\n'
        f'public_key = "{public_key}"\nstate_dir = "{small_disk / "state"}"\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "edge", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("edgeloop-edge:")]
    assert len(lines) == 1 and "No space left" in lines[0], done.stderr


@pytest.mark.timeout(60)
def test_a_send_stuck_on_a_frozen_redis_is_spooled_by_keep_now_and_trained_once(
    tmp_path: Path, redis_server: RedisServer, redis_url: str, keys: FleetKeys
) -> None:
    """A Redis that accepts and does not answer (SIGSTOP) holds a send up to the socket
    timeout; ``keep_now`` (what the edge's feedback answer does after 1 s) puts the
    event in the fsync'd spool at once, so an answer never waits on that timeout and a
    kill after it loses nothing. The event may reach the stream twice, with one id."""
    member = FleetMember(redis_url, keys, "pi-1", "digits")
    up = FeedbackUplink(member, "e0", tmp_path, UplinkPolicy(flush_ms=5.0))
    up.start()
    assert redis_server.proc is not None
    try:
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            ((event_id, line),) = events(up, 1)
            time.sleep(0.5)
            assert not up.kept(line)  # its send hangs
            assert up.keep_now(line) and up.kept(line)
            assert up.spooled == 1 and up.spool_bytes > 0
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
        assert up.flush(timeout=20)
    finally:
        up.close(timeout=2)
    client = redis.Redis.from_url(redis_url)
    got = [e["event_id"] for e in stream_events(client, keys.feedback_of("digits"))]
    client.close()
    assert set(got) == {event_id}  # once or twice, one id: the trainer trains it once
