"""``edgeloop-edge``: --help, one-line user errors, --check, and a real run until SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from edge import cli
from edge.daemon import EdgeDaemon
from shared.keys import FleetKeys
from tests.serving import Signing, wait_for


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def write_config(path: Path, **values: object) -> Path:
    lines = [f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_edge(cfg: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """``python -m edge --config cfg`` with ``env``, its output in one pipe."""
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "--config", str(cfg)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_help_works() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "--config" in result.stdout and "--check" in result.stdout


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read config"),
        ("fleet = [", "not valid TOML"),
        ('fleet = "lab"\n', "public_key: Field required"),
        ('public_key = "/nonexistent/signing.pub"\nfleet = "bad name!"\n', "fleet"),
        ('public_key = "/nonexistent/signing.pub"\nstatus_interval_s = 20\n', "status_ttl_s"),
    ],
)
def test_a_bad_config_is_one_line_and_exit_2(
    tmp_path: Path, content: str | None, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "edge.toml"
    if content is not None:
        path.write_text(content)
    assert cli.main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("edgeloop-edge: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_public_key_is_a_clear_error_without_a_traceback(
    tmp_path: Path, redis_url: str
) -> None:
    cfg = write_config(
        tmp_path / "edge.toml",
        public_key=tmp_path / "missing.pub",
        state_dir=tmp_path / "state",
        redis_url=redis_url,
    )
    result = run_cli("--config", str(cfg))
    assert result.returncode == 2
    assert "cannot read public key" in result.stderr and "Traceback" not in result.stderr


def test_check_follows_the_health_key(
    tmp_path: Path,
    daemon_factory: Callable[..., EdgeDaemon],
    signing: Signing,
    redis_url: str,
    redis_client: redis.Redis,
    keys: FleetKeys,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg = write_config(
        tmp_path / "edge.toml",
        device_id="pi-1",
        fleet="lab",
        public_key=signing.public_key,
        redis_url=redis_url,
    )
    assert cli.main(["--config", str(cfg), "--check"]) == 1
    assert "no report from pi-1" in capsys.readouterr().out

    daemon = daemon_factory()  # same device and fleet; serves only the baseline: degraded
    wait_for(lambda: redis_client.get(keys.device("pi-1")), what="health key")
    assert cli.main(["--config", str(cfg), "--check"]) == 1
    assert "degraded" in capsys.readouterr().out

    # A status that says serving, as a device with a cloud model reports it.
    served = {"state": "serving", "version": 3}
    health = daemon.health()
    models = {"digits": health.models["digits"].model_copy(update=served)}
    status = health.model_copy(update={**served, "models": models})
    daemon.status.stop()
    redis_client.set(keys.device("pi-1"), status.to_wire(), ex=5)
    assert cli.main(["--config", str(cfg), "--check"]) == 0
    assert capsys.readouterr().out.startswith("healthy: pi-1 serving digits v3")

    # An edge of several models is healthy only when every model serves.
    bearing = models["digits"].model_copy(update={"model": "bearing", "state": "degraded"})
    both = status.model_copy(update={"models": {**models, "bearing": bearing}})
    redis_client.set(keys.device("pi-1"), both.to_wire(), ex=5)
    assert cli.main(["--config", str(cfg), "--check"]) == 1
    assert "pi-1 (bearing) is degraded" in capsys.readouterr().out

    stale = status.model_copy(update={"ts": time.time() - 60})
    redis_client.set(keys.device("pi-1"), stale.to_wire(), ex=5)
    assert cli.main(["--config", str(cfg), "--check"]) == 1

    dead = write_config(
        tmp_path / "dead.toml", public_key=signing.public_key, redis_url="redis://127.0.0.1:1/0"
    )
    assert cli.main(["--config", str(dead), "--check"]) == 1
    assert "cannot reach Redis" in capsys.readouterr().out


def test_the_daemon_serves_until_sigterm_and_stops_cleanly(
    tmp_path: Path, signing: Signing, redis_url: str, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path / "edge.toml",
        device_id="pi-cli",
        fleet="lab",
        public_key=signing.public_key,
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        http_port=port,
        status_interval_s=0.5,
    )
    proc = start_edge(cfg, {**os.environ, "EDGELOOP_EDGE_STATUS_TTL_S": "7"})
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(f"{url}/v1/health"), timeout=60, what="the CLI's HTTP API")
        body = json.dumps({"x": [0.0] * 64}).encode()
        req = urllib.request.Request(
            f"{url}/v1/predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            request_id = json.loads(resp.read())["request_id"]
        req = urllib.request.Request(
            f"{url}/v1/feedback",
            data=json.dumps({"label": 2, "request_id": request_id}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        assert 0 < redis_client.ttl(keys.device("pi-cli")) <= 7  # the env var beat the file
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "edge pi-cli stopped" in out
    assert redis_client.xlen(keys.feedback_of("digits")) == 1
    assert json.loads(redis_client.get(keys.device("pi-cli")))["state"] == "stopping"  # type: ignore[arg-type]


def test_check_says_an_http_uplink_edge_has_no_health_key_to_read(
    tmp_path: Path, signing: Signing, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path / "edge.toml",
        device_id="pi-1",
        fleet="lab",
        public_key=signing.public_key,
        uplink="http",
        api_url="http://127.0.0.1:9",
        api_token="elt_x",
    )
    assert cli.main(["--config", str(cfg), "--check"]) == 1
    assert "reports through the API (uplink = http)" in capsys.readouterr().out
