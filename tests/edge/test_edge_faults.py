"""The whole edge daemon under two of the chaos scenario's faults, each alone: cut off
from Redis (a proxy that starves every connection, as a dead link does), and on a wall
clock an hour ahead (the scenario's LD_PRELOAD shim). It serves throughout, installs
what it is sent, and every truth it accepted reaches the stream once. (The proxy and
the shim are the scenario's own, stdlib and C only.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import redis
from helpers import publish_version, stream_events, variant
from test_edge_cli import free_port, healthy, start_edge, write_config

from cloud.demo.chaos import clock
from cloud.demo.stall_proxy import StallProxy
from edge.daemon import EdgeDaemon
from shared.keys import FleetKeys
from tests.conftest import RedisServer
from tests.serving import Signing, wait_for

X = np.arange(64, dtype=np.float32) % 17


def event_ids(client: redis.Redis, keys: FleetKeys) -> list[str]:
    return [e["event_id"] for e in stream_events(client, keys.feedback_of("digits"))]


@pytest.mark.timeout(60)
def test_an_edge_cut_off_from_redis_serves_on_and_delivers_every_truth_once_after(
    daemon_factory: Callable[..., EdgeDaemon],
    redis_server: RedisServer,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    proxy = StallProxy(redis_server.port)
    try:
        daemon = daemon_factory(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        publish_version(redis_client, keys, signing.signer, variant(1), 1)
        wait_for(lambda: daemon.health().version == 1, what="v1 served")
        accepted = []
        proxy.cut.set()  # every byte dropped, connections left silent
        for i in range(40):
            answer = daemon.predict(X.copy())
            assert answer.model_version == 1
            accepted.append(daemon.feedback(i % 10, request_id=answer.request_id).event_id)
        time.sleep(1.0)  # the sender's batches hang on the silent link
        assert event_ids(redis_client, keys) == []
        proxy.heal()
        wait_for(lambda: len(event_ids(redis_client, keys)) >= 40, timeout=30, what="the spool")
        assert sorted(event_ids(redis_client, keys)) == sorted(accepted)  # each once
    finally:
        proxy.heal()
        proxy.close()


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler for clockshift.so")
@pytest.mark.timeout(120)
def test_an_edge_an_hour_ahead_installs_serves_and_reports(
    tmp_path: Path,
    signing: Signing,
    redis_url: str,
    redis_client: redis.Redis,
    keys: FleetKeys,
) -> None:
    shim = clock.build(tmp_path)
    assert shim is not None
    offset = tmp_path / "offset"
    env = {**os.environ, **clock.env_for(shim, offset)}
    offset.write_text("3600\n")  # an hour ahead from its first clock read
    port = free_port()
    cfg = write_config(
        tmp_path / "edge.toml",
        device_id="pi-late",
        fleet="lab",
        public_key=signing.public_key,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        http_port=port,
        status_interval_s=0.5,
    )
    proc = start_edge(cfg, env)
    try:
        publish_version(redis_client, keys, signing.signer, variant(1), 1)

        def status() -> dict[str, object] | None:
            raw = redis_client.get(keys.device("pi-late"))
            return json.loads(raw) if raw else None

        wait_for(lambda: (status() or {}).get("version") == 1, timeout=60, what="v1 reported")
        url = f"http://127.0.0.1:{port}/v1"
        wait_for(lambda: healthy(f"{url}/health"), timeout=30, what="its HTTP API")
        request_id = post(f"{url}/predict", {"x": X.tolist()})["request_id"]
        post(f"{url}/feedback", {"label": 3, "request_id": request_id})
        wait_for(lambda: event_ids(redis_client, keys), timeout=30, what="the truth")
        reported = status()
        assert reported is not None and reported["state"] == "serving"
        ahead = float(reported["ts"]) - time.time()  # type: ignore[arg-type]
        assert 3500 < ahead < 3700  # its own clock stamped the report
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        print(out)  # shown when the test fails
    assert proc.returncode == 0, out
    assert "Traceback" not in out, out


def post(url: str, body: dict[str, object]) -> dict[str, object]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, object] = json.loads(resp.read())
        return answer
