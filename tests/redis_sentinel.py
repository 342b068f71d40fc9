"""A real Sentinel-managed pair for tests: a primary, one replica and three sentinels
on loopback ports.

The primary and the replica are ``redis-server`` (the replica with ``--replicaof``);
each sentinel is ``redis-server <its config> --sentinel`` (a sentinel rewrites its
config file, so each has its own) watching the service ``SERVICE`` with a quorum of 2,
``down-after-milliseconds`` 1000 and ``failover-timeout`` 3000, so that a killed
primary is replaced within a few seconds. Ready when every sentinel knows the replica
and the two other sentinels and the replica is in sync.

With ``secure`` (``tests.redis_cluster.Secure``) every link speaks only TLS (clients,
replication, the sentinels' own) and the data nodes load an ACL file; with
``sentinel_password`` the sentinels require it (``requirepass``, and ``sentinel-pass``
among themselves).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from tests.redis_cluster import Secure, free_ports

SERVICE = "lab"
SENTINELS = 3
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class RedisSentinelPair:
    """A primary, its replica and three sentinels we start and stop."""

    def __init__(
        self, workdir: Path, secure: Secure | None = None, sentinel_password: str | None = None
    ) -> None:
        self.workdir, self.secure, self.sentinel_password = workdir, secure, sentinel_password
        ports = free_ports(2 + SENTINELS)
        #: The data nodes' ports, the first the primary at the start.
        self.ports = ports[:2]
        self.sentinel_ports = ports[2:]
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return self.url_as(None, None)

    def url_as(self, user: str | None, password: str | None = None, db: int = 0) -> str:
        """The Sentinel URL with a data node user's credentials (``secure``'s password of
        ``user`` when none is given) and the sentinels' password if they require one."""
        if password is None and user and self.secure:
            password = self.secure.password(user)
        auth = f"{user or ''}:{password}@" if password else ""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        scheme = "rediss+sentinel" if self.secure else "redis+sentinel"
        query = f"?sentinel_password={self.sentinel_password}" if self.sentinel_password else ""
        return f"{scheme}://{auth}{hosts}/{SERVICE}/{db}{query}"

    def node(self, port: int) -> redis.Redis:
        """An admin's client of one data node."""
        admin = self.secure.admin if self.secure else {}
        return redis.Redis(port=port, socket_timeout=5, socket_connect_timeout=1, **admin)

    def sentinel(self, port: int) -> redis.Redis:
        tls = {"ssl": True, "ssl_ca_certs": str(self.secure.ca)} if self.secure else {}
        return redis.Redis(
            port=port, socket_timeout=5, socket_connect_timeout=1,
            password=self.sentinel_password, **tls,
        )  # fmt: skip

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed: run `make test`, which installs it")
        primary, replica = self.ports
        self._start_node(primary)
        self._start_node(replica, "--replicaof", "127.0.0.1", str(primary))
        self._wait(self._replica_online, "replica in sync")
        for port in self.sentinel_ports:
            self._start_sentinel(port, primary)
        self._wait(self._sentinels_ready, "3 sentinels that know each other and the replica")

    def _start_node(self, port: int, *extra: str) -> None:
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--save", "", "--appendonly", "no", "--protected-mode", "no",
             "--daemonize", "no", "--loglevel", "warning",
             "--repl-diskless-sync-delay", "0", "--shutdown-timeout", "0",
             *(self._tls_node_args(port) if self.secure else ()), *extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _start_sentinel(self, port: int, primary: int) -> None:
        d = self.workdir / f"sentinel-{port}"
        d.mkdir(parents=True, exist_ok=True)
        conf = d / "sentinel.conf"
        conf.write_text(
            f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {d}\nloglevel warning\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {primary} 2\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {SERVICE} 1\n" + self._secure_sentinel_conf(port)
        )
        self.procs[port] = subprocess.Popen(
            ["redis-server", str(conf), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def _tls_node_args(self, port: int) -> list[str]:
        assert self.secure is not None
        # Secure.node_args is a cluster node's: the same without the cluster bus
        args = self.secure.node_args(port)
        i = args.index("--tls-cluster")
        return args[:i] + args[i + 2 :]

    def _secure_sentinel_conf(self, port: int) -> str:
        lines = []
        if self.sentinel_password:
            p = self.sentinel_password
            lines += [f"requirepass {p}", f"sentinel sentinel-pass {p}"]
        if self.secure:
            sec = self.secure
            lines += [
                "port 0", f"tls-port {port}", f"tls-cert-file {sec.cert}",
                f"tls-key-file {sec.key}", f"tls-ca-cert-file {sec.ca}",
                f"tls-client-cert-file {sec.client_cert}",
                f"tls-client-key-file {sec.client_key}",
                "tls-auth-clients no", "tls-replication yes",
                f"sentinel auth-user {SERVICE} {sec.admin_user}",
                f"sentinel auth-pass {SERVICE} {sec.password(sec.admin_user)}",
            ]  # fmt: skip
        return "".join(line + "\n" for line in lines)

    def _replica_online(self) -> bool:
        with self.node(self.primary()) as node:
            info = node.info("replication")
        return (
            bool(info.get("connected_slaves")) and info.get("slave0", {}).get("state") == "online"
        )

    def _sentinels_ready(self) -> bool:
        for port in self.sentinel_ports:
            with self.sentinel(port) as sentinel:
                state = sentinel.sentinel_master(SERVICE)
            if state["num-other-sentinels"] < SENTINELS - 1 or state["num-slaves"] < 1:
                return False
        return True

    def _wait(self, ok: Callable[[], object], what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if ok():
                    return
            except redis.RedisError:
                pass
            assert time.monotonic() < deadline, f"Redis Sentinel: no {what} in {timeout:.0f} s"
            time.sleep(0.05)

    def primary(self) -> int:
        """The port of the data node that is the primary now (asked of the nodes)."""
        for port in self.ports:
            if port not in self.procs:
                continue
            with self.node(port) as node:
                if node.info("replication")["role"] == "master":
                    return port
        raise AssertionError("no primary among the live data nodes")

    def named_primary(self) -> int | None:
        """The primary's port as a live sentinel names it."""
        for port in self.sentinel_ports:
            try:
                with self.sentinel(port) as sentinel:
                    _, p = sentinel.sentinel_get_master_addr_by_name(SERVICE)
                return int(p)
            except (redis.RedisError, TypeError):
                continue
        return None

    def kill(self, port: int) -> None:
        """SIGKILL one process (a crash, no goodbye)."""
        proc = self.procs.pop(port)
        proc.kill()
        proc.wait(10)

    def restart(self, port: int, replica_of: int | None = None) -> None:
        """Start a killed data node again on its port: as a replica of ``replica_of``
        (as its config would say once rewritten), or as a primary, which the sentinels
        turn into a replica of the one they promoted (about 10 s later: a sentinel
        waits 8 s before it corrects a role)."""
        extra = ("--replicaof", "127.0.0.1", str(replica_of)) if replica_of else ()
        self._start_node(port, *extra)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        self.procs.clear()
