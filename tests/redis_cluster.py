"""A real Redis Cluster for tests: 3 masters and 3 replicas on loopback ports.

Each node is a ``redis-server --cluster-enabled yes`` with its own port and cluster
bus port (``cluster-port``, both free ports); ``redis-cli --cluster create ...
--cluster-replicas 1 --cluster-yes`` assigns the slots and the replicas, and the
cluster is ready when every node says ``cluster_state:ok``. The whole start takes
about a second; ``tests/conftest.py`` starts one per session, and only when a test
asks for it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

MASTERS = 3
REPLICAS_PER_MASTER = 1


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (the cluster's nodes, a Sentinel pair's)."""
    from tests.conftest import free_port

    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


@dataclass
class Secure:
    """A cluster with TLS on every link (clients, cluster bus, replication; no
    plaintext port) and an ACL file on every node; the replicas and the tests connect as
    ``admin_user``."""

    ca: Path
    cert: Path
    key: Path
    #: What a node shows when it connects to another's bus or to its master (the
    #: server certificate is for serverAuth only).
    client_cert: Path
    client_key: Path
    aclfile: Path
    admin_user: str
    passwords: dict[str, str]

    def password(self, user: str) -> str:
        return self.passwords[user]

    @property
    def admin(self) -> dict[str, Any]:
        return {
            "ssl": True, "ssl_ca_certs": str(self.ca), "username": self.admin_user,
            "password": self.password(self.admin_user),
        }  # fmt: skip

    @property
    def cli_args(self) -> list[str]:
        return ["--tls", "--cacert", str(self.ca), "--user", self.admin_user,
                "--pass", self.password(self.admin_user), "--no-auth-warning"]  # fmt: skip

    def node_args(self, port: int) -> list[str]:
        return ["--port", "0", "--tls-port", str(port), "--tls-cluster", "yes",
                "--tls-replication", "yes", "--tls-cert-file", str(self.cert),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
                "--tls-client-cert-file", str(self.client_cert),
                "--tls-client-key-file", str(self.client_key),
                "--tls-auth-clients", "no", "--aclfile", str(self.aclfile),
                "--masteruser", self.admin_user,
                "--masterauth", self.password(self.admin_user)]  # fmt: skip


class RedisClusterNodes:
    """Six redis-servers we start, join into one cluster and stop."""

    def __init__(self, workdir: Path, secure: Secure | None = None) -> None:
        self.workdir = workdir
        self.secure = secure
        n = MASTERS * (1 + REPLICAS_PER_MASTER)
        ports = free_ports(2 * n)
        self.ports, self.bus_ports = ports[:n], ports[n:]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._bus = dict(zip(self.ports, self.bus_ports, strict=True))

    @property
    def url(self) -> str:
        """The cluster URL with every node as a seed (any one would do)."""
        return self.url_as(None)

    def url_as(self, user: str | None) -> str:
        """The URL with ``user``'s credentials (``secure``'s password of that user)."""
        scheme = "rediss+cluster" if self.secure else "redis+cluster"
        auth = f"{user}:{self.secure.password(user)}@" if user and self.secure else ""
        return f"{scheme}://{auth}" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def node(self, port: int) -> redis.Redis:
        """An admin's client of one node."""
        return redis.Redis(
            port=port, socket_timeout=5, **(self.secure.admin if self.secure else {})
        )

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None or shutil.which("redis-cli") is None:
            pytest.fail("redis-server is not installed: run `make test`, which installs it")
        for port, bus in zip(self.ports, self.bus_ports, strict=True):
            self._start_node(exe, port, bus)
        for port in self.ports:
            self._wait(lambda p=port: self.node(p).ping(), f"node {port} answers")
        create = subprocess.run(
            ["redis-cli", *(self.secure.cli_args if self.secure else ()), "--cluster", "create",
             *(f"127.0.0.1:{p}" for p in self.ports),
             "--cluster-replicas", str(REPLICAS_PER_MASTER), "--cluster-yes"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert create.returncode == 0, f"redis-cli --cluster create failed:\n{create.stdout}"
        self._wait(self._all_ok, "cluster_state:ok on every node", timeout=30)
        self._wait(self._replicas_online, "replica in sync with each master", timeout=30)

    def _start_node(self, exe: str, port: int, bus: int) -> None:
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [exe, "--port", str(port), "--cluster-port", str(bus), "--bind", "127.0.0.1",
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", "2000", "--dir", str(d), "--save", "",
             "--appendonly", "yes", "--appendfsync", "everysec", "--protected-mode", "no",
             "--daemonize", "no", "--loglevel", "warning",
             # a replica syncs at once (the default waits 5 s for more replicas to join)
             "--repl-diskless-sync-delay", "0",
             # a stopped master does not wait for its (also stopping) replica to catch up
             "--shutdown-timeout", "0",
             *(self.secure.node_args(port) if self.secure else ())],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _all_ok(self) -> bool:
        for port in self.ports:
            if port not in self.procs:
                continue
            info = self.node(port).execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
        return True

    def _replicas_online(self) -> bool:
        """Each master has its replicas connected and synced (WAIT counts only those)."""
        for port in self.masters():
            info = self.node(port).info("replication")
            replicas = [info.get(f"slave{i}", {}) for i in range(REPLICAS_PER_MASTER)]
            if not all(r.get("state") == "online" for r in replicas):
                return False
        return True

    def _wait(self, ok: object, what: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ok():  # type: ignore[operator]
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, f"Redis Cluster: no {what} in {timeout:.0f} s"
            time.sleep(0.05)

    def masters(self) -> list[int]:
        """The ports of the nodes that are masters now."""
        return [p for p in self.procs if self.node(p).info("replication").get("role") == "master"]

    def flushall(self) -> None:
        for port in self.masters():
            self.node(port).flushall()

    def synced(self, port: int, timeout: float = 10.0) -> None:
        """Wait until every replica of master ``port`` has what it wrote so far: a kill
        then loses only the writes that come after (replication is asynchronous, and on
        a loaded machine a replica can be a second behind)."""

        def caught_up() -> bool:
            info = self.node(port).info("replication")
            offset = int(info.get("master_repl_offset", 0))
            replicas = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
            return bool(replicas) and all(int(r.get("offset", 0)) >= offset for r in replicas)

        self._wait(caught_up, f"replicas of {port} caught up", timeout)

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash, no goodbye)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def restart(self, port: int, *, empty: bool = False) -> None:
        """Start a killed node again on its port and directory: it rejoins the cluster
        (a replica of the master that replaced it). ``empty``: without the data it had
        (its append-only file), as a replaced machine would come back."""
        if empty:
            shutil.rmtree(self.workdir / str(port) / "appendonlydir", ignore_errors=True)
        self._start_node(shutil.which("redis-server") or "redis-server", port, self._bus[port])

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # stuck in a sync: no data to keep
                proc.kill()
                proc.wait(10)
        self.procs.clear()
