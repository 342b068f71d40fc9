"""``edgeloop quarantine list|release``: devices whose feedback is kept aside, through the API.

    edgeloop quarantine list
    edgeloop quarantine release DEVICE [--model M]

A device is quarantined by the trainer when its labels disagree with the
model far more often than the rest of the fleet's (cloud/data/quarantine.py);
its feedback is kept, not trained on. ``release`` (an admin token) queues that
feedback for training again. Exit codes as ``edgeloop rollout``'s: 4 when the
device is not quarantined, 5 for a missing or too weak token.
"""

from __future__ import annotations

import argparse

from cloud.api.schemas import QuarantinePublic, QuarantineReleased
from cloud.cli.client import api_client, api_options
from cloud.cli.output import show


def quarantine_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    api_options(sub.add_parser("list", help="quarantined devices and why"))
    s = sub.add_parser("release", help="release a device: its kept feedback is trained on")
    s.add_argument("device", help="the device id")
    s.add_argument("--model", "-m", help="only for this model (default: every model)")
    api_options(s)


def quarantine(args: argparse.Namespace) -> int:
    api = api_client(args)
    if args.action == "release":
        params = {"model": args.model} if args.model else None
        raw = api.request("POST", "/v1/quarantine/{}/release", args.device, params=params)
        done, raw = api.parse(QuarantineReleased, raw)
        return show(
            args,
            raw,
            f"released {done.device_id} for {', '.join(done.models)}: "
            f"{done.requeued} kept samples queued for training",
        )
    listing, raw = api.get_as(QuarantinePublic, "/v1/quarantine")
    if not listing.devices:
        return show(args, raw, f"no device of fleet {listing.fleet} is quarantined")
    from rich.table import Table

    table = Table("device", "model", "rate", "fleet", "kept", "reason", title="quarantined")
    for d in listing.devices:
        table.add_row(
            d.device_id, d.model, f"{d.rate:.0%}", f"{d.fleet_rate:.0%}", str(d.kept), d.reason
        )
    return show(args, raw, table)
