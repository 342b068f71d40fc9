"""No secret in a log or error line: real connection failures with a password in the
Redis URL, from the edge daemon, its health check and the ``edgeloop`` commands."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli import check as edge_check
from edge.daemon import EdgeDaemon
from tests.security.conftest import free_port
from tests.serving import Signing, make_settings, wait_for

SECRET = "s3cret-Pw-4711"


def _dead_url() -> str:
    return f"redis://edge:{SECRET}@127.0.0.1:{free_port()}/0"  # nothing listens there


def test_an_edge_that_cannot_reach_redis_never_logs_its_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    signing = Signing.create(tmp_path)
    settings = make_settings(tmp_path, _dead_url(), signing.public_key)
    caplog.set_level(logging.DEBUG)
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: daemon.health().last_error, what="the outage noticed")
        health = daemon.health().model_dump_json()
    assert edge_check(settings) != 0
    out = capsys.readouterr().out
    assert "edge:***@127.0.0.1" in out
    for text in (caplog.text, health, out):
        assert SECRET not in text
    assert "Redis unreachable" in caplog.text  # the failure itself is logged


@pytest.mark.parametrize(
    "argv, env",
    [
        (["token", "list"], "EDGELOOP_API_REDIS_URL"),
        (["controller", "--once"], "EDGELOOP_API_REDIS_URL"),
        (["trainer", "--check"], "EDGELOOP_TRAINER_REDIS_URL"),
    ],
)
def test_the_cli_never_prints_the_password_of_an_unreachable_redis(
    argv: list[str], env: str, tmp_path: Path
) -> None:
    environ = {
        **os.environ,
        env: _dead_url(),
        "EDGELOOP_API_MODE": "development",
        "EDGELOOP_TRAINER_MODE": "development",
        "EDGELOOP_API_BLOB_DIR": str(tmp_path),
        "EDGELOOP_TRAINER_BLOB_DIR": str(tmp_path),
    }
    done = subprocess.run(
        [sys.executable, "-m", "cloud.cli.main", *argv],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode != 0
    assert SECRET not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
