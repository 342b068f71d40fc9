"""The ``edgeloop`` CLI: one-line user errors (exit 2), lazy imports, Ctrl-C, health check."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud.cli import main as cli
from shared.keys import FleetKeys
from shared.messages import TrainerStatus
from shared.redis_client import connect_redis

ROOT = Path(__file__).resolve().parents[3]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cloud.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )


def test_keygen_writes_a_private_key_only_we_can_read(tmp_path):
    r = run_cli("keygen", "--out", str(tmp_path / "k"))
    assert r.returncode == 0, r.stderr
    key = tmp_path / "k" / "signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and (tmp_path / "k" / "signing.pub").exists()
    again = run_cli("keygen", "--out", str(tmp_path / "k"))
    assert again.returncode == 2
    assert again.stderr.strip().count("\n") == 0 and "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.stderr


def test_keygen_does_not_import_torch(tmp_path):
    code = (
        "import sys; from cloud.cli.main import main; rc = main(['keygen', '--out', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_TRAINER_")}
    r = subprocess.run(
        [sys.executable, "-m", "cloud.cli.main", "trainer"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert (
        r.returncode == 2 and "signing_key is required" in r.stderr and "Traceback" not in r.stderr
    )
    r = run_cli("trainer", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "cannot read config" in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('mode = "development"\nfleet = "no spaces allowed"\n')
    r = run_cli("trainer", "--config", str(bad))
    assert r.returncode == 2 and "fleet" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def hello_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out")


def hello(args: argparse.Namespace) -> int:
    print(f"hello {args.out}")
    return 7


def test_more_commands_register_in_one_line(monkeypatch, capsys):
    monkeypatch.setitem(
        cli.COMMANDS,
        "hello",
        cli.Command.of("say hello", __name__, "hello"),
    )
    assert cli.main(["hello", "--out", "there"]) == 7
    assert capsys.readouterr().out == "hello there\n"


@pytest.mark.redis_cluster
def test_health_check(redis_url, signing_dir, tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'fleet = "hc"\nredis_url = "{redis_url}"\nsigning_key = "{signing_dir / "signing.key"}"\n'
    )
    assert run_cli("trainer", "--config", str(config), "--check").returncode == 1
    connect_redis(redis_url).set(
        FleetKeys("hc").trainer("digits"), TrainerStatus(model="digits", consumer="x").to_wire()
    )
    r = run_cli("trainer", "--config", str(config), "--check")
    assert r.returncode == 0 and "healthy" in r.stdout


def test_trainer_bootstraps_and_ctrl_c_exits_130_quietly(redis_url, signing_dir, tmp_path):
    config = tmp_path / "cloud.toml"
    config.write_text(
        f'fleet = "cli"\nredis_url = "{redis_url}"\nsigning_key = "{signing_dir / "signing.key"}"\n'
        "bootstrap_epochs = 5\nstatus_interval_s = 0.5\nblock_ms = 50\n"
    )
    client = connect_redis(redis_url)
    # its log goes to a file: a pipe nobody reads until the end could fill and stall it
    log = tmp_path / "trainer.log"
    with (
        log.open("w") as stderr,
        subprocess.Popen(
            [sys.executable, "-m", "cloud.cli.main", "trainer", "--config", str(config)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        ) as proc,
    ):
        try:
            # a bootstrap takes 20 s alone and over a minute beside the suite's demos
            deadline = time.monotonic() + 240
            versions = FleetKeys("cli").versions("digits")
            while client.zcard(versions) == 0 and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
            assert client.zcard(versions) == 1, log.read_text()[-2000:]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    err = log.read_text()
    assert proc.returncode == 130, err[-2000:]
    assert "stopping (signal 2)" in err and "Traceback" not in err
    assert not client.exists(FleetKeys("cli").trainer_lock("digits"))


def test_parser_lists_every_command():
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"trainer", "keygen", "baseline"} <= set(sub.choices)
