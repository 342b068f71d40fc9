"""``edgeloop token issue|list|revoke``: the API's tokens, straight in Redis.

These commands read the API's own settings (``--config api.toml``,
``EDGELOOP_API_*``) and talk to its Redis, not to the API: that is how the first
admin token comes to exist, and it needs the pepper, which only the API's
operators hold. A token is printed once, on stdout, and never stored.

    edgeloop token issue --role admin --name alice --ttl 30d --config api.toml
    edgeloop token issue --role device --name pi-07 --device pi-07 --ttl 1y
    edgeloop token list
    edgeloop token revoke alice

A token expires after ``--ttl`` (``90s``, ``45m``, ``12h``, ``30d``, ``1y``; default
the API's ``token_ttl_s``); ``--ttl never`` only against a development API.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from shared.tokens import ROLES

#: ``--ttl never``: a token without an expiry.
NEVER = -1.0
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}


def duration(text: str) -> float:
    """Seconds in ``text`` (``90s``, ``45m``, ``12h``, ``30d``, ``2w``, ``1y``, or plain
    seconds); ``NEVER`` for ``never``.

    >>> duration("30d"), duration("90"), duration("never")
    (2592000.0, 90.0, -1.0)
    """
    text = text.strip().lower()
    if text == "never":
        return NEVER
    number, unit = (text[:-1], text[-1]) if text[-1:] in _UNITS else (text, "s")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use a positive number with s, m, h, d, w or y "
            "(30d), or never"
        )
    return value


if TYPE_CHECKING:  # imported when a command runs: `edgeloop --help` stays light
    from cloud.api.tokens import TokenStore


def token_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    s = sub.add_parser("issue", help="make a token and print it (once)")
    s.add_argument("--role", required=True, choices=ROLES)
    s.add_argument(
        "--name", required=True, help="unique name: a person, a service or the device id"
    )
    s.add_argument("--device", help="device tokens: the device id it may post for")
    s.add_argument(
        "--ttl",
        type=duration,
        metavar="DURATION",
        help="lifetime: 90s, 45m, 12h, 30d or 1y (default: the API's token_ttl_s); "
        "never: no expiry (development only)",
    )
    sub.add_parser("list", help="tokens by name, role and device (never the tokens)")
    s = sub.add_parser("revoke", help="revoke a token by name (at once, in every API process)")
    s.add_argument("name")
    for s in sub.choices.values():
        s.add_argument("--config", type=Path, help="the API's TOML settings (EDGELOOP_API_* win)")
        s.add_argument("--json", action="store_true", help="print JSON on one line")


def token(args: argparse.Namespace) -> int:
    import redis

    from cloud.api.settings import ApiSettings
    from cloud.api.tokens import TokenStore
    from shared.config import load_settings
    from shared.keys import FleetKeys

    settings = load_settings(ApiSettings, args.config)
    client = settings.redis_client()
    store = TokenStore(
        client,
        FleetKeys(settings.fleet),
        settings.pepper,
        default_ttl_s=settings.token_ttl_s,
        allow_no_expiry=settings.mode == "development",
    )
    if settings.mode == "development" and settings.dev_pepper:
        print(
            "development mode: tokens are hashed with the public development pepper",
            file=sys.stderr,
        )
    try:
        return _run(store, args)
    except redis.RedisError as e:
        from shared.transport import unreachable

        raise unreachable(settings.redis_url, e) from e
    finally:
        client.close()


def _run(store: TokenStore, args: argparse.Namespace) -> int:
    if args.action == "issue":
        return _issue(store, args)
    if args.action == "revoke":
        record = store.revoke(args.name, by="cli")
        print(json.dumps({"revoked": record.name}) if args.json else f"revoked {record.name!r}")
        return 0
    records = store.records()
    if args.json:
        print(json.dumps([r.model_dump(exclude={"schema_version"}) for r in records]))
        return 0
    from rich.console import Console

    from cloud.cli.render.tokens import tokens_table

    Console().print(tokens_table(records))
    return 0


def _issue(store: TokenStore, args: argparse.Namespace) -> int:
    never = args.ttl == NEVER
    record, secret = store.issue(
        args.name,
        args.role,
        args.device,
        by="cli",
        ttl_s=None if never else args.ttl,
        never_expires=never,
    )
    if args.json:
        print(json.dumps({**record.model_dump(exclude={"schema_version"}), "token": secret}))
        return 0
    print(secret)
    who = f" for device {record.device}" if record.device else ""
    until = (
        time.strftime(" until %Y-%m-%d %H:%M UTC", time.gmtime(record.expires_at))
        if record.expires_at is not None
        else " that never expires"
    )
    print(
        f"issued {record.role} token {record.name!r}{who}{until}; it is shown only now",
        file=sys.stderr,
    )
    return 0
