"""``edgeloop keygen`` and ``edgeloop keys init|rotate|revoke|publish|show``.

``keygen`` makes the Ed25519 key pair that signs version manifests. ``keys`` is the
ceremony of the fleet's TUF repository (cloud/registry/tuf_keys.py)::

    edgeloop keys init --fleet lab --keys ./lab-keys --root-keys 3 --threshold 2
    edgeloop keys rotate targets --fleet lab --keys ./lab-keys
    edgeloop keys revoke root 3f2a9c01 --fleet lab --keys ./lab-keys
    edgeloop keys show --fleet lab
    # root keys offline: on the air-gapped machine, then online
    edgeloop keys rotate targets --fleet lab --keys ./lab-keys --offline
    edgeloop keys publish ./lab-keys/2.root.json --fleet lab --targets-key targets.key

They talk to Redis as its ``admin`` user (``--redis-url``, else
``EDGELOOP_ADMIN_REDIS_URL``). The root keys are read from ``--root-keys-dir``
(default ``KEYS/root``): on a real fleet, the offline medium, mounted only for the
ceremony.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import ConfigError
from shared.redis_client import connect_redis

if TYPE_CHECKING:  # imported when a command runs: `edgeloop --help` stays light
    import redis
    from tuf.api.metadata import Root

    from shared.keys import FleetKeys


def keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="directory for signing.key and signing.pub"
    )


def keygen(args: argparse.Namespace) -> int:
    from shared.signing import write_keypair

    private, public = write_keypair(args.out)
    print(
        f"wrote {private} (keep it secret; the trainer's signing_key) and {public} (for the edges)"
    )
    return 0


ROLES = ("root", "targets", "snapshot", "timestamp", "director")


def keys_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("init", help="create the fleet's root and role keys and root v1")
    s.add_argument("--root-keys", type=int, default=3, help="n: how many root keys (3)")
    s.add_argument("--threshold", type=int, default=2, help="k: root signatures needed (2)")
    s.add_argument(
        "--no-director",
        action="store_true",
        help="name no director key in the root (edges follow unsigned targets)",
    )
    s = sub.add_parser("rotate", help="a new key for a role, in a new root version")
    s.add_argument("role", help="one of " + ", ".join(ROLES))
    s.add_argument("--replace", metavar="KEYID", help="replace only this key (8+ digits)")
    s = sub.add_parser("revoke", help="remove a role's key, in a new root version")
    s.add_argument("role", help="one of " + ", ".join(ROLES))
    s.add_argument("keyid", help="the key to remove (8 or more digits of its id)")
    for name in ("rotate", "revoke"):
        sub.choices[name].add_argument(
            "--offline",
            action="store_true",
            help="no Redis: read KEYS/root.json, write the new signed root and keys to KEYS "
            "(on the air-gapped machine; then `keys publish` online)",
        )
    s = sub.add_parser("publish", help="store a root signed offline (after checking its chain)")
    s.add_argument("root_file", type=Path, help="the new N.root.json")
    s.add_argument("--targets-key", type=Path, help="the new targets key, if the root names one")
    s.add_argument(
        "--online-key", type=Path, help="the (new) online key: re-sign snapshot and timestamp"
    )
    sub.add_parser("show", help="what the fleet's root trusts, and which root each edge trusts")
    for name, s in sub.choices.items():
        s.add_argument("--fleet", default="default")
        s.add_argument("--redis-url", default=os.environ.get("EDGELOOP_ADMIN_REDIS_URL"))
        s.add_argument("--ca-file", type=Path, help="CA of a rediss:// server")
        if name not in ("show", "publish"):
            s.add_argument("--keys", type=Path, required=True, help="the fleet's key directory")
            s.add_argument(
                "--root-keys-dir",
                type=Path,
                help="where the root keys are (default KEYS/root; the offline medium)",
            )
        s.add_argument("--json", action="store_true", help="print JSON on one line")


def keys(args: argparse.Namespace) -> int:
    import redis

    from shared.keys import FleetKeys
    from shared.transport import tls_options, unreachable

    if getattr(args, "role", None) is not None and args.role not in ROLES:
        raise ConfigError(f"unknown role {args.role!r}: one of {', '.join(ROLES)}")
    fleet = FleetKeys(args.fleet)
    if getattr(args, "offline", False):
        return _change(None, fleet, args)
    if not args.redis_url:
        raise ConfigError("give the admin Redis URL: --redis-url or EDGELOOP_ADMIN_REDIS_URL")
    client = connect_redis(args.redis_url, **tls_options(args.redis_url, args.ca_file))
    try:
        if args.action == "show":
            return _show(client, fleet, args.json)
        if args.action == "publish":
            return _publish(client, fleet, args)
        return _change(client, fleet, args)
    except redis.RedisError as e:
        raise unreachable(args.redis_url, e) from e
    finally:
        client.close()


def _publish(client: redis.Redis, fleet: FleetKeys, args: argparse.Namespace) -> int:
    from cloud.registry.tuf_keys import publish_root_file

    root = publish_root_file(
        client, fleet, args.root_file, targets_key=args.targets_key, online_key=args.online_key
    ).signed
    print(
        json.dumps(_trust(root))
        if args.json
        else f"fleet {fleet.fleet}: root v{root.version} stored (edges follow it at their "
        "next refresh)"
    )
    return 0


def _change(client: redis.Redis | None, fleet: FleetKeys, args: argparse.Namespace) -> int:
    from tuf.api.metadata import Metadata, Root

    from cloud.registry.tuf_keys import KeyDir, init_fleet, revoke_key, rotate_key

    keydir = KeyDir(args.keys, args.root_keys_dir)
    if args.action == "init":
        if client is None:  # pragma: no cover - init has no --offline
            raise ConfigError("init stores root v1: it needs Redis")
        if args.root_keys < 1:
            raise ConfigError(f"--root-keys must be at least 1, not {args.root_keys}")
        data = init_fleet(
            client,
            fleet,
            keydir,
            root_keys=args.root_keys,
            threshold=args.threshold,
            director=not args.no_director,
        )
        root = Metadata[Root].from_bytes(data).signed
        done = (
            f"fleet {fleet.fleet}: root v1 ({args.threshold} of {args.root_keys}) stored; "
            f"keys in {args.keys}. Move {keydir.roots} to offline media; give devices "
            f"{keydir.trusted_root} as tuf_root, the trainer {keydir.file('targets')}, "
            f"the controller {keydir.file('online')}"
            + ("" if args.no_director else f" and {keydir.file('director')}")
        )
    elif args.action == "rotate":
        root = rotate_key(client, fleet, keydir, args.role, replace=args.replace).signed
        done = (
            f"fleet {fleet.fleet}: new {args.role} key, root v{root.version} stored "
            f"(edges follow it at their next refresh){_restart_hint(args.role, keydir)}"
            if client is not None
            else f"fleet {fleet.fleet}: new {args.role} key, root v{root.version} signed: "
            f"carry {args.keys}/{root.version}.root.json (and the new {args.role} key, "
            "unless root) to `edgeloop keys publish`"
        )
    else:
        root = revoke_key(client, fleet, keydir, args.role, args.keyid).signed
        done = f"fleet {fleet.fleet}: {args.role} key {args.keyid} revoked, root v{root.version}"
        if client is None:
            done += (
                f" signed: carry {args.keys}/{root.version}.root.json to `edgeloop keys publish`"
            )
    if args.json:
        print(json.dumps(_trust(root)))
    else:
        print(done)
    return 0


def _restart_hint(role: str, keydir: Any) -> str:
    if role == "targets":
        return f"; restart the trainer with tuf_targets_key = {keydir.file('targets')}"
    if role in ("snapshot", "timestamp"):
        return f"; restart the controller with tuf_online_key = {keydir.file('online')}"
    if role == "director":
        return f"; restart the controller with director key {keydir.file('director')}"
    return f"; move the new root keys in {keydir.roots} to offline media"


def _trust(root: Root) -> dict[str, Any]:
    from cloud.registry.tuf_repo import director_keys

    roles: dict[str, Any] = {
        name: {"threshold": role.threshold, "keyids": list(role.keyids)}
        for name, role in root.roles.items()
    }
    director = director_keys(root)
    roles["director"] = (
        {"threshold": 1, "keyids": sorted(director)} if director is not None else None
    )
    return {
        "root_version": root.version,
        "expires": root.expires.isoformat(),
        "roles": roles,
    }


def _edges(client: redis.Redis, fleet: FleetKeys) -> list[dict[str, Any]]:
    """Each device's last report: which root version it trusts."""
    from shared import replies
    from shared.errors import MessageError
    from shared.messages import EdgeStatus

    devices = replies.members(client.zrevrange(fleet.devices, 0, -1))
    if not devices:
        return []
    out = []
    raws = client.mget([fleet.device(d) for d in devices])
    for device, raw in zip(devices, raws, strict=True):  # type: ignore[arg-type]
        try:
            status = EdgeStatus.from_wire(raw) if raw else None
        except MessageError:
            status = None
        out.append(
            {
                "device_id": device,
                "online": status is not None,
                "tuf_root_version": status.tuf_root_version if status else None,
            }
        )
    return out


def _metadata_expiry(client: redis.Redis, fleet: FleetKeys, role: str) -> dict[str, Any]:
    """Version and expiry of the role's current metadata file (a frozen repository
    shows as an expired timestamp)."""
    from tuf.api.metadata import Metadata

    raw = client.get(fleet.tuf_metadata(f"{role}.json"))
    if raw is None:
        return {"version": None, "expires": None}
    signed = Metadata.from_bytes(bytes(raw)).signed  # type: ignore[arg-type]
    return {"version": signed.version, "expires": signed.expires.isoformat()}


def _show(client: redis.Redis, fleet: FleetKeys, as_json: bool) -> int:
    from cloud.registry.tuf_keys import current_root

    trust = _trust(current_root(client, fleet).signed)
    for role in ("root", "targets", "snapshot", "timestamp"):
        trust["roles"][role]["metadata"] = _metadata_expiry(client, fleet, role)
    edges = _edges(client, fleet)
    newest = trust["root_version"]
    for e in edges:
        v = e["tuf_root_version"]
        e["behind"] = v is not None and v < newest
    if as_json:
        print(json.dumps({"fleet": fleet.fleet, **trust, "edges": edges}))
        return 0
    print(f"fleet {fleet.fleet}: root v{newest}, expires {trust['expires']}")
    print(f"{'role':<10} {'threshold':<10} {'metadata':<36} keyids")
    for name in ROLES:
        role = trust["roles"].get(name)
        if role is None:
            print(f"{name:<10} {'-':<10} not named in the root (edges use director_keys files)")
            continue
        ids = " ".join(k[:16] for k in role["keyids"])
        meta = role.get("metadata")
        label = f"v{meta['version']} until {meta['expires']}" if meta and meta["version"] else ""
        threshold = f"{role['threshold']} of {len(role['keyids'])}"
        print(f"{name:<10} {threshold:<10} {label:<36} {ids}")
    if edges:
        print(f"\n{'device':<24} root")
        for e in edges:
            v = e["tuf_root_version"]
            label = "offline" if not e["online"] else ("no TUF" if v is None else f"v{v}")
            print(f"{e['device_id']:<24} {label}{'  (behind)' if e['behind'] else ''}")
    return 0
