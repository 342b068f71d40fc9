"""The chaos scenario's faults, each alone and for real, in a few seconds: the
schedule drawn from the seed, redis-server killed and restarted from its AOF, a
supervised process restarted, the proxy's cut, a full tmpfs, a stepped wall clock."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from cloud.demo.chaos import clock
from cloud.demo.chaos.disks import fill, mount_tmpfs, unmount
from cloud.demo.chaos.schedule import QUICK_FREEZE_S, draw
from cloud.demo.services import ProcessGroup, start_redis
from cloud.demo.stall_proxy import StallProxy
from tests.conftest import RedisServer


def test_the_schedule_comes_from_the_seed_and_the_quick_one_freezes_redis_15_s() -> None:
    assert draw(3, quick=True, edges=3) == draw(3, quick=True, edges=3)
    assert draw(3, quick=True, edges=3) != draw(4, quick=True, edges=3)
    for seed in range(20):
        quick = draw(seed, quick=True, edges=3)
        kinds = [(f.kind, f.target) for f in quick]
        assert ("redis-freeze", "redis") in kinds and ("redis-kill", "redis") in kinds
        assert {t for k, t in kinds if k == "kill"} == {"trainer", "edge-1", "api", "controller"}
        assert {t for k, t in kinds if k == "disk-full"} == {"edge-3", "blobs"}
        freeze, kill = (
            next(f for f in quick if f.kind == k) for k in ("redis-freeze", "redis-kill")
        )
        assert freeze.duration == QUICK_FREEZE_S and kill.at > freeze.at + freeze.duration
        assert max(f.at for f in quick) < 90  # all started within the quick run
        full = next(f for f in draw(seed, quick=False, edges=3) if f.kind == "redis-freeze")
        assert 5.0 <= full.duration <= 30.0


def test_a_killed_redis_server_comes_back_from_its_aof_with_every_acknowledged_write(
    tmp_path: Path,
) -> None:
    group = ProcessGroup(tmp_path)
    try:
        url = start_redis(group)
        client = redis.Redis.from_url(url)
        for i in range(2000):  # each acknowledged before the next is sent
            client.xadd("s", {"i": i})
        os.kill(group.children[0].proc.pid, signal.SIGKILL)  # right after the last reply
        group.children[0].proc.wait()
        group.respawn(group.children[0])
        deadline = time.monotonic() + 10
        while True:
            try:
                assert client.xlen("s") == 2000
                break
            except (redis.ConnectionError, redis.BusyLoadingError):
                assert time.monotonic() < deadline
                time.sleep(0.05)
        client.close()
    finally:
        group.stop_all()


def test_a_supervised_process_is_started_again_as_it_was_with_its_log_kept(tmp_path: Path) -> None:
    group = ProcessGroup(tmp_path)
    try:
        child = group.spawn(
            "sleeper",
            [sys.executable, "-c", "print('up', flush=True); import time; time.sleep(60)"],
        )
        time.sleep(0.5)
        first = child.proc.pid
        os.killpg(first, signal.SIGKILL)
        child.proc.wait()
        group.respawn(child)
        time.sleep(0.5)
        assert child.alive() and child.proc.pid != first
        assert child.log_path.read_text().count("up") == 2  # appended, not overwritten
        assert group.children == [child]
    finally:
        group.stop_all()


@pytest.mark.timeout(30)
def test_the_cut_starves_every_connection_and_healing_lets_new_ones_through(
    redis_server: RedisServer, redis_url: str
) -> None:
    proxy = StallProxy(redis_server.port)
    client = redis.Redis(
        port=proxy.port,
        socket_timeout=0.5,
        socket_connect_timeout=0.5,
        retry=Retry(NoBackoff(), 0),  # one try a command: what the test counts
    )
    try:
        assert client.ping()
        proxy.cut.set()
        for _ in range(2):  # the open connection, then a new one: both time out
            with pytest.raises(redis.TimeoutError):
                client.ping()
        proxy.heal()
        assert client.ping()  # the starved connection was closed; a new one answers
    finally:
        client.close()
        proxy.heal()
        proxy.close()


def test_a_full_tmpfs_refuses_writes_until_the_filler_goes(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    refused = mount_tmpfs(disk, 1 << 20)
    if refused is not None:
        pytest.skip(f"cannot mount a tmpfs here: {refused}")
    try:
        assert fill(disk / "filler") > 900_000
        with pytest.raises(OSError, match="No space left"), (disk / "x").open("wb") as f:
            f.write(b"x" * 8192)
            f.flush()
            os.fsync(f.fileno())
        (disk / "filler").unlink()
        (disk / "x").write_bytes(b"x" * 8192)
    finally:
        unmount(disk)


STEPPED = """
import time, threading
from pathlib import Path
import sys
t0, m0 = time.time(), time.monotonic()
Path(sys.argv[1]).write_text("3600\\n")
time.sleep(1.2)  # the shim re-reads the offset at most once a second
threading.Event().wait(0.1)
print(round(time.time() - t0), round(time.monotonic() - m0))
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for clockshift.so")
def test_the_stepped_clock_moves_the_wall_clock_an_hour_and_leaves_timeouts_alone(
    tmp_path: Path,
) -> None:
    shim = clock.build(tmp_path)
    assert shim is not None
    offset = tmp_path / "offset"
    env = {**os.environ, **clock.env_for(shim, offset)}
    done = subprocess.run(
        [sys.executable, "-c", STEPPED, str(offset)], env=env, capture_output=True, timeout=30
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    wall, monotonic = map(int, done.stdout.split())
    assert wall == 3601 and monotonic == 1
