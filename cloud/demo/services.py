"""Processes the demo starts and must stop: a private redis-server, the trainer
and the edge daemons. Every child runs in its own session so that one signal
stops it and whatever it started; ``ProcessGroup.stop_all`` is safe to call
twice and runs on Ctrl-C too."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from shared.errors import ConfigError
from shared.redis_client import connect_redis

logger = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    #: how it was started, so that a supervisor can start it again (``respawn``)
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class ProcessGroup:
    """Children started by the demo, stopped in reverse order."""

    workdir: Path
    children: list[Child] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Child:
        log_path = self.workdir / f"{name}.log"
        child = Child(name, self._popen(argv, env or {}, log_path, "wb"), log_path, argv, env or {})
        self.children.append(child)
        return child

    def respawn(self, child: Child) -> None:
        """Start ``child`` again as it was started (its log goes on): what a supervisor
        does with a process that died."""
        # it keeps its place: Redis is still stopped after the edges that drain into it
        child.proc = self._popen(child.argv, child.env, child.log_path, "ab")

    @staticmethod
    def _popen(
        argv: list[str], env: dict[str, str], log_path: Path, mode: str
    ) -> subprocess.Popen[bytes]:
        log = open(log_path, mode)  # noqa: SIM115 - the child owns it until it exits
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        try:
            return subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True
            )
        finally:
            log.close()

    def stop(self, child: Child, timeout: float = 15.0) -> None:
        if child.alive():
            os.killpg(child.proc.pid, signal.SIGTERM)
            try:
                child.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0fs; killing it", child.name, timeout)
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()

    def stop_all(self) -> None:
        for child in reversed(self.children):
            with contextlib.suppress(
                ProcessLookupError
            ):  # it exited between the check and the signal
                self.stop(child)


def python_module(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def start_redis(group: ProcessGroup) -> str:
    """A redis-server with AOF on a free loopback port in the demo's directory."""
    exe = shutil.which("redis-server")
    if exe is None:
        raise ConfigError("redis-server is not installed: run `make demo`, which installs it")
    port = free_port()
    data = group.workdir / "redis"
    data.mkdir()
    group.spawn(
        "redis",
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--appendonly",
            "yes",
            # A write is in the AOF's file (the kernel's page cache) before Redis
            # answers it, so a killed redis-server loses nothing it acknowledged;
            # the fsync each second bounds what a power cut loses to one second
            # (``always`` would fsync every write: the demo's disk is a shared tmp).
            "--appendfsync",
            "everysec",
            "--save",
            "",
            "--daemonize",
            "no",
        ],
    )
    url = f"redis://127.0.0.1:{port}/0"
    _wait_for_redis(url, log=data.parent / "redis.log")
    return url


def _wait_for_redis(url: str, log: Path, timeout: float = 10.0) -> None:
    client = connect_redis(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise ConfigError(f"redis-server did not start; see {log}") from None
            time.sleep(0.05)
        finally:
            client.close()
