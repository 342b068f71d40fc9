"""A real redis-server loaded with an ACL file, and a check that Redis refused a call on
permissions: what the ACL tests (shipped, generated, trainer) share."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import redis

from tests.conftest import free_port, wait_answering


@contextlib.contextmanager
def acl_server(acl_text: str, workdir: Path, admin_url: Callable[[int], str]) -> Iterator[int]:
    """A redis-server on a free loopback port with ``acl_text`` as its ACL file, ready (the
    user of ``admin_url(port)`` answers PING) when its port is yielded; stopped after."""
    acl = workdir / "users.acl"
    acl.write_text(acl_text)
    port = free_port()
    proc = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
         "127.0.0.1", "--aclfile", str(acl), "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    admin = redis.Redis.from_url(admin_url(port))
    try:
        wait_answering(admin, proc, "redis-server with the ACL file")
        yield port
    finally:
        admin.close()
        proc.terminate()
        proc.wait(10)


def noperm(call: Callable[[], object]) -> bool:
    """Whether Redis refused ``call`` on permissions (directly, in a script or a transaction)."""
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    except redis.ResponseError as e:  # in a script: "... can't run this command ..."
        return "NOPERM" in str(e) or "can't run this command" in str(e)
    return False
