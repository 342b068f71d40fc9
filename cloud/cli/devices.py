"""``edgeloop device enroll|revoke|list`` and ``edgeloop acl generate``.

These commands talk to Redis as its ``admin`` user (``--redis-url``, else
``EDGELOOP_ADMIN_REDIS_URL``): creating a Redis user takes ``ACL SETUSER``, which
no service user may run.

    edgeloop device enroll pi-07 --fleet lab --out ./pi-07   # copy ./pi-07 to the device
    edgeloop device list --fleet lab
    edgeloop device revoke pi-07 --fleet lab
    edgeloop acl generate --fleet lab --fleet plant > users.acl

``enroll`` writes ``device.json`` (fleet, device id, Redis user and password) and
``device.key`` (the private key), both mode 0600, into a new directory; the password and
private key are never stored by the cloud nor printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import ConfigError
from shared.redis_client import connect_redis

if TYPE_CHECKING:  # imported when a command runs: `edgeloop --help` stays light
    from cloud.registry.devices import Credentials, DeviceRegistry


def device_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("enroll", help="create the device's Redis user and key pair")
    s.add_argument("name", help="the device id")
    s.add_argument(
        "--out", type=Path, help="directory to write the credentials to (default: ./<name>)"
    )
    s = sub.add_parser("revoke", help="delete the device's Redis user and key")
    s.add_argument("name")
    sub.add_parser("list", help="enrolled devices")
    for s in sub.choices.values():
        s.add_argument("--fleet", default="default")
        s.add_argument("--redis-url", default=os.environ.get("EDGELOOP_ADMIN_REDIS_URL"))
        s.add_argument("--ca-file", type=Path, help="CA of a rediss:// server")
        s.add_argument("--json", action="store_true", help="print JSON on one line")


def device(args: argparse.Namespace) -> int:
    import redis

    from cloud.registry.devices import DeviceRegistry
    from shared.keys import FleetKeys
    from shared.transport import tls_options, unreachable

    if not args.redis_url:
        raise ConfigError("give the admin Redis URL: --redis-url or EDGELOOP_ADMIN_REDIS_URL")
    client = connect_redis(args.redis_url, **tls_options(args.redis_url, args.ca_file))
    registry = DeviceRegistry(client, FleetKeys(args.fleet))
    try:
        if args.action == "enroll":
            return _enroll(registry, args)
        if args.action == "revoke":
            record = registry.revoke(args.name)
            print(
                json.dumps({"revoked": record.device_id})
                if args.json
                else f"revoked {record.device_id!r}"
            )
            return 0
        records = registry.list()
        if args.json:
            print(json.dumps([r.model_dump(exclude={"public_key"}) for r in records]))
        else:
            for r in records:
                print(f"{r.device_id}\t{r.acl_user}")
        return 0
    except redis.RedisError as e:
        raise unreachable(args.redis_url, e) from e
    finally:
        client.close()


def _enroll(registry: DeviceRegistry, args: argparse.Namespace) -> int:
    out: Path = args.out or Path(args.name)
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not empty; refusing to overwrite credentials")
    creds = registry.enroll(args.name)
    write_credentials(out, creds)
    summary = {"enrolled": creds.device_id, "acl_user": creds.acl_user, "out": str(out)}
    print(
        json.dumps(summary)
        if args.json
        else f"enrolled {creds.device_id!r}: copy {out} to the device"
    )
    return 0


def write_credentials(out: Path, creds: Credentials) -> None:
    """``device.json`` and ``device.key`` in ``out`` (0700), both 0600."""
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    doc = {
        "fleet": creds.fleet,
        "device_id": creds.device_id,
        "redis_user": creds.acl_user,
        "redis_password": creds.password,
        "key_file": "device.key",
    }
    for name, data in (
        ("device.json", json.dumps(doc, indent=2).encode()),
        ("device.key", creds.private_key),
    ):
        fd = os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)


def acl_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("generate", help="print the ACL file of the service users for fleets")
    s.add_argument("--fleet", action="append", required=True, help="a fleet (repeat for more)")


def acl(args: argparse.Namespace) -> int:
    from cloud.registry.devices import service_lines

    sys.stdout.write("\n".join(service_lines(args.fleet)) + "\n")
    return 0
