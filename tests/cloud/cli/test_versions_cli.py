"""``edgeloop versions|explain|diff`` against a live API server (uvicorn on a real port)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.cli import main as cli
from tests.cloud.api_helpers import PEPPER, issue

FLEET = "test"  # tests/cloud/conftest.py
ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(redis_server, published_fleet, signing_dir) -> Iterator[str]:
    """A real uvicorn server on the session's redis-server (tests restore the fleet's keys)."""
    settings = ApiSettings(
        fleet=FLEET,
        redis_url=redis_server.url,
        port=free_port(),
        public_key=signing_dir / "signing.pub",
        blob_dir=published_fleet.blob_dir,
        token_pepper=PEPPER,
    )
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=settings.port,
        log_level="warning",
        lifespan="on",
    )
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{settings.port}"
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def api_url(server, fleet_client, monkeypatch) -> str:
    monkeypatch.setenv("COLUMNS", "160")  # rich's width when stdout is not a terminal
    monkeypatch.delenv("EDGELOOP_API_URL", raising=False)
    monkeypatch.setenv("EDGELOOP_TOKEN", issue(fleet_client, FLEET, "viewer"))
    return server


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_versions_is_a_table_of_every_version(api_url, capsys, published_fleet):
    code, out, _ = run(capsys, "versions", "--api", api_url)
    assert code == 0
    assert "digits: 2 versions" in out and "v1" in out and "v2" in out
    for sha in published_fleet.shas:
        assert sha[:12] in out
    assert "drift" in out and "bootstrap" in out and "latest" in out
    code, out, _ = run(capsys, "versions", "digits", "--api", api_url, "--json")
    body = json.loads(out)
    assert code == 0 and [v["sha256"] for v in body["versions"]] == published_fleet.shas


def test_explain_shows_every_section(api_url, capsys):
    code, out, _ = run(capsys, "explain", "2", "--api", api_url)
    assert code == 0, out
    for section in (
        "Summary",
        "Data window",
        "Hyperparameters",
        "Metrics",
        "per-class recall",
        "Forgetting",
        "Predictions that flipped",
        "Per-layer change",
        "Attribution shift",
        "signature verified",
    ):
        assert section in out, section
    assert "trigger drift: served accuracy" in out and "r0 " in out and "c7" in out
    grid = [line for line in out.splitlines() if re.match(r"^│\s*r[0-7]\s*│", line)]
    assert len(grid) == 8 and all(len(re.findall(r"[+-]\d+|\b0\b", row)) == 8 for row in grid), grid
    for layer in ("c1", "c2", "f1", "f2"):
        assert f" {layer} " in out
    code, out, _ = run(capsys, "explain", "latest", "--api", api_url, "--json")
    body = json.loads(out)
    assert code == 0 and body["explanation"]["trigger"] == "drift" and body["signature_verified"]


def test_explain_the_bootstrap_says_it_has_no_parent(api_url, capsys):
    code, out, _ = run(capsys, "explain", "v1", "--model", "digits", "--api", api_url)
    assert code == 0 and "no parent" in out and "seed split" in out


def test_diff_puts_metrics_side_by_side(api_url, capsys):
    code, out, _ = run(capsys, "diff", "1", "2", "--api", api_url)
    assert code == 0, out
    assert "v1" in out and "v2" in out and "v2 descends from v1" in out
    assert "fixed (v1 wrong, v2 right)" in out and "bytes differ" in out
    code, out, _ = run(capsys, "diff", "1", "latest", "--api", api_url, "--json")
    d = json.loads(out)
    assert d["flips"]["fixed"] > d["flips"]["broken"] and d["b"]["version"]["version"] == 2


def test_user_errors_are_one_line_and_exit_2_or_4_for_not_found(api_url, capsys, monkeypatch):
    for argv, words, exit_code in (
        (["explain", "9"], "no version 9 (HTTP 404)", 4),
        (["explain", "not a ref!"], "name a version by number", 2),
        (["diff", "1", "2", "--model", "nope"], "no model 'nope'", 4),
    ):
        code, out, err = run(capsys, *argv, "--api", api_url)
        assert code == exit_code and words in err and err.count("\n") == 1 and not out, (argv, err)
    monkeypatch.setenv("EDGELOOP_TOKEN", "elt_not-a-token")
    code, _, err = run(capsys, "versions", "--api", api_url)
    assert code == 5 and "unknown or revoked (HTTP 401)" in err
    code, _, err = run(capsys, "versions", "--api", "http://127.0.0.1:9")
    assert code == 2 and "cannot reach the edgeloop API at http://127.0.0.1:9" in err


def test_the_api_url_comes_from_the_environment_or_a_config_file(
    api_url, capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("EDGELOOP_API_URL", api_url)
    code, out, _ = run(capsys, "versions", "--json")
    assert code == 0 and json.loads(out)["model"] == "digits"
    monkeypatch.delenv("EDGELOOP_API_URL")
    config = tmp_path / "client.toml"
    config.write_text(f'api_url = "{api_url}"\n')
    code, out, _ = run(capsys, "explain", "1", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["version"]["version"] == 1


def test_a_real_process_prints_the_explanation_without_importing_torch(api_url):
    code = (
        "import sys; from cloud.cli.main import main; rc = main(sys.argv[1:]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    env = {**os.environ, "COLUMNS": "120"}
    r = subprocess.run(
        [sys.executable, "-c", code, "explain", "2", "--api", api_url],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "Attribution shift" in r.stdout and "Traceback" not in r.stderr
