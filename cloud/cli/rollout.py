"""``edgeloop rollout|fleet|devices``: staged rollouts and the fleet through the REST API.

    edgeloop rollout start [MODEL] VERSION [--canary N|P%] [--stages ...] [--manual] [--devices ...]
    edgeloop rollout status [ID] [--model M]      edgeloop rollout watch ID
    edgeloop rollout promote|pause|resume|abort|rollback ID
    edgeloop rollout pin DEVICE VERSION [--model M]      edgeloop rollout unpin DEVICE [--model M]
    edgeloop fleet                    edgeloop devices [--model M]

Where a command acts on one model's versions, the model is MODEL or ``--model``; without
either, the fleet's only model (with several, the error lists them).

The API's address and token come from ``--api``/``EDGELOOP_API_URL``/``api_url`` and
``EDGELOOP_TOKEN``/``token`` in the client config (``cloud/cli/client.py``).
``--json`` prints the API's JSON on one line (``watch``: a line per change).

Exit codes: 0 ok; 2 a usage or user error (a conflict, a malformed request, the
API unreachable); 3 the rollout was rolled back or aborted (``watch``, and
``start --wait``); 4 not found; 5 no, a bad or a too weak token.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cloud.api.schemas import (
    DevicesPublic,
    FleetPublic,
    PinPublic,
    PinsRemoved,
    RolloutPublic,
    RolloutsPublic,
)
from cloud.cli.client import ApiClient, api_client, api_options, only_model
from cloud.cli.output import show
from shared.errors import InputError

#: ``watch``'s exit code for a rollout that ended without completing.
EXIT_ROLLOUT_FAILED = 3
ACTIONS = ("promote", "pause", "resume", "abort", "rollback")


# -- arguments --------------------------------------------------------------------


def rollout_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    _start_args(sub.add_parser("start", help="start a rollout of VERSION"))
    s = sub.add_parser("status", help="a rollout, or the list of rollouts")
    s.add_argument("id", nargs="?", help="rollout id (default: list them)")
    s.add_argument("--limit", type=int, default=20, help="rollouts to list")
    s.add_argument("--model", "-m", help="list only this model's rollouts")
    api_options(s)
    s = sub.add_parser("watch", help="follow a rollout until it ends (exit 0 completed, 3 not)")
    s.add_argument("id", help="rollout id")
    s.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    s.add_argument("--timeout", type=float, help="give up after this many seconds (exit 2)")
    api_options(s)
    for action in ACTIONS:
        s = sub.add_parser(action, help=f"{action} a rollout")
        s.add_argument("id", help="rollout id")
        api_options(s)
    s = sub.add_parser("pin", help="pin a device to a version (rollouts leave it alone)")
    s.add_argument("device", help="device id")
    s.add_argument("version", help="version: number, label or sha256")
    s.add_argument("--model", "-m", help="model name (default: the fleet's only model)")
    api_options(s)
    s = sub.add_parser("unpin", help="let a device follow the fleet again")
    s.add_argument("device", help="device id")
    s.add_argument("--model", "-m", help="only this model's pin (default: every model's)")
    api_options(s)


def _start_args(s: argparse.ArgumentParser) -> None:
    s.add_argument(
        "target",
        nargs="+",
        metavar="[MODEL] VERSION",
        help="the model (default: --model, or the fleet's only model) and version B: "
        "number (4 or v4), label or sha256",
    )
    s.add_argument("--model", "-m", help="model name (or give it before VERSION)")
    s.add_argument(
        "--canary",
        metavar="N|P%",
        help="size of the first ring: a count or a percentage (default 10%%)",
    )
    s.add_argument(
        "--stages",
        metavar="NAME=N|P%,...",
        help="all rings, e.g. canary=1,half=50%%,all=100%% (default canary=10%%,half=50%%,all=100%%)",
    )
    s.add_argument(
        "--manual", action="store_true", help="wait for `rollout promote` after each passing stage"
    )
    s.add_argument(
        "--devices", metavar="ID,...", action="append", help="only these devices (repeatable)"
    )
    s.add_argument("--min-labeled", type=int, help="labeled predictions on B before a decision")
    s.add_argument("--min-requests", type=int, help="predictions on B before rates are judged")
    s.add_argument("--min-dwell", type=float, metavar="S", help="seconds on B before a pass")
    s.add_argument("--max-accuracy-drop", type=float, help="vs the same devices on A (0..1)")
    s.add_argument(
        "--max-error-rise",
        type=float,
        help="a lower-is-better metric (mae) on B vs the same devices on A, as a share of A's",
    )
    s.add_argument(
        "--stage-timeout", type=float, metavar="S", help="no decision by then: roll back"
    )
    s.add_argument(
        "--wait", action="store_true", help="then watch it (exit 3 if it is rolled back)"
    )
    api_options(s)


def fleet_args(p: argparse.ArgumentParser) -> None:
    api_options(p)


def devices_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--limit",
        type=int,
        default=1000,
        help="at most this many, newest report first (fetched 500 a page)",
    )
    p.add_argument(
        "--model", "-m", help="the devices that serve this model, with their report on it"
    )
    api_options(p)


# -- commands ---------------------------------------------------------------------


def rollout(args: argparse.Namespace) -> int:
    api = api_client(args)
    actions: dict[str, Callable[[ApiClient, argparse.Namespace], int]] = {
        "start": _start,
        "status": _status,
        "watch": lambda api, args: watch(api, args.id, args),
        "pin": _pin,
        "unpin": _unpin,
    }
    return actions.get(args.action, _act)(api, args)


def fleet(args: argparse.Namespace) -> int:
    summary, raw = api_client(args).get_as(FleetPublic, "/v1/fleet")
    from cloud.cli.render.rollout import fleet_view

    return show(args, raw, fleet_view(summary))


#: The most devices the API answers in one page (``GET /v1/devices``).
DEVICES_PAGE = 500


def devices(args: argparse.Namespace) -> int:
    api = api_client(args)
    listing, raw = api.get_as(
        DevicesPublic, "/v1/devices", limit=str(min(args.limit, DEVICES_PAGE))
    )
    while len(listing.devices) < min(args.limit, listing.total):  # further pages, by offset
        offset = len(listing.devices)
        page, _ = api.get_as(
            DevicesPublic,
            "/v1/devices",
            limit=str(min(args.limit - offset, DEVICES_PAGE)),
            offset=str(offset),
        )
        if not page.devices:
            break
        listing.devices += page.devices
    from cloud.cli.render.rollout import devices_table

    if args.model is not None or len(listing.devices) > DEVICES_PAGE:
        listing.devices = [d for d in listing.devices if args.model in (None, *d.models)]
        raw = listing.model_dump(mode="json")
    return show(args, raw, devices_table(listing, args.model))


def _status(api: ApiClient, args: argparse.Namespace) -> int:
    from cloud.cli.render.rollout import rollout_view, rollouts_table

    if args.id is None:
        rollouts, raw = api.get_as(RolloutsPublic, "/v1/rollouts", limit=str(args.limit))
        if args.model is not None:
            rollouts.rollouts = [r for r in rollouts.rollouts if r.model == args.model]
            raw = rollouts.model_dump(mode="json")
        return show(args, raw, rollouts_table(rollouts))
    r, raw = api.get_as(RolloutPublic, "/v1/rollouts/{}", args.id)
    return show(args, raw, rollout_view(r))


def _act(api: ApiClient, args: argparse.Namespace) -> int:
    """promote, pause, resume, abort or rollback."""
    r, raw = api.post_as(RolloutPublic, f"/v1/rollouts/{{}}/{args.action}", args.id)
    from cloud.cli.render.rollout import rollout_view

    return show(args, raw, rollout_view(r))


def _pin(api: ApiClient, args: argparse.Namespace) -> int:
    body = {"model": args.model or only_model(api), "version": args.version}
    pin, raw = api.put_as(PinPublic, "/v1/devices/{}/pin", args.device, body=body)
    return show(
        args, raw, f"{pin.device_id} pinned to {pin.model} v{pin.version} ({pin.sha256[:12]})"
    )


def _unpin(api: ApiClient, args: argparse.Namespace) -> int:
    params = {"model": args.model} if args.model else {}
    removed, raw = api.delete_as(PinsRemoved, "/v1/devices/{}/pin", args.device, **params)
    return show(args, raw, f"{removed.device_id} unpinned from {', '.join(removed.models)}")


def _start(api: ApiClient, args: argparse.Namespace) -> int:
    model, version = _model_and_version(api, args.target, args.model)
    body: dict[str, Any] = {
        "model": model,
        "target": version,
        "stages": stages_of(args.stages, args.canary),
        "auto_promote": not args.manual,
    }
    if args.devices:
        body["devices"] = [d for group in args.devices for d in group.split(",") if d]
    if gate := _gate_of(args):
        body["gate"] = gate
    r, raw = api.post_as(RolloutPublic, "/v1/rollouts", body=body)
    if args.wait:
        if not args.json:
            print(f"rollout {r.id} started", file=sys.stderr)
        return watch(api, r.id, args)
    from cloud.cli.render.rollout import rollout_view

    return show(args, raw, rollout_view(r))


def _model_and_version(api: ApiClient, target: list[str], option: str | None) -> tuple[str, str]:
    """``rollout start``'s model and version: ``MODEL VERSION``, or ``VERSION`` with the model
    from ``--model`` or the fleet's only model."""
    if len(target) > 2:
        raise InputError(f"rollout start takes [MODEL] VERSION, not {' '.join(target)!r}")
    if len(target) == 2:
        if option is not None and option != target[0]:
            raise InputError(f"model {target[0]!r} given twice, the second time as {option!r}")
        return target[0], target[1]
    return option or only_model(api), target[0]


def _gate_of(args: argparse.Namespace) -> dict[str, Any]:
    """The gate options given (the API's defaults stand for the others)."""
    given = (
        ("min_labeled", args.min_labeled),
        ("min_requests", args.min_requests),
        ("min_dwell_s", args.min_dwell),
        ("max_accuracy_drop", args.max_accuracy_drop),
        ("max_error_rise", args.max_error_rise),
        ("stage_timeout_s", args.stage_timeout),
    )
    return {name: value for name, value in given if value is not None}


def stages_of(stages: str | None, canary: str | None) -> list[dict[str, Any]]:
    """Stage specs from ``--stages`` and ``--canary``.

    >>> stages_of("c=1,all=100%", None)
    [{'name': 'c', 'count': 1}, {'name': 'all', 'percent': 100.0}]
    >>> stages_of(None, "2")[0], len(stages_of(None, "5%"))
    ({'name': 'canary', 'count': 2}, 3)
    """
    text = stages or "canary=10%,half=50%,all=100%"
    out = []
    for part in text.split(","):
        name, sep, size = part.strip().partition("=")
        if not sep or not name or not size:
            raise InputError(
                f"--stages: {part!r} is not NAME=N or NAME=P% (e.g. canary=1,all=100%)"
            )
        out.append({"name": name.strip(), **_size(size.strip(), "--stages")})
    if canary is not None:
        out[0] = {"name": out[0]["name"], **_size(canary.strip(), "--canary")}
    return out


def _size(text: str, option: str) -> dict[str, Any]:
    try:
        if text.endswith("%"):
            percent = float(text[:-1])
            if not 0 < percent <= 100:
                raise ValueError
            return {"percent": percent}
        count = int(text)
        if count < 1:
            raise ValueError
        return {"count": count}
    except ValueError as e:
        raise InputError(
            f"{option}: {text!r} is neither a count (>= 1) nor a percentage (1%-100%)"
        ) from e


def watch(api: ApiClient, rollout_id: str, args: argparse.Namespace) -> int:
    """Follow a rollout until it ends: 0 when it completed, 3 when rolled back or aborted."""
    timeout = getattr(args, "timeout", None)  # `start --wait` has no --interval, no --timeout
    deadline = time.monotonic() + timeout if timeout else None
    follow = _Follow(api, rollout_id, getattr(args, "interval", 1.0), deadline)
    return follow.json_lines() if args.json else follow.live()


@dataclass(frozen=True)
class _Follow:
    """A rollout read again every ``interval`` seconds until it ends (or ``deadline``)."""

    api: ApiClient
    rollout_id: str
    interval: float
    deadline: float | None

    def json_lines(self) -> int:
        """The API's JSON, a line each time the rollout changes."""
        last_update = None
        while True:
            r, raw = self.fetch()
            if r.updated_at != last_update:
                sys.stdout.write(json.dumps(raw, separators=(",", ":")) + "\n")
                sys.stdout.flush()
                last_update = r.updated_at
            if not r.active:
                return _exit_of(r)
            self.pause()

    def live(self) -> int:
        """The rollout's view, redrawn in place."""
        from rich.console import Console
        from rich.live import Live

        from cloud.cli.render.rollout import rollout_view

        r, _ = self.fetch()
        with Live(rollout_view(r), console=Console(), refresh_per_second=4) as live:
            while r.active:
                self.pause()
                r, _ = self.fetch()
                live.update(rollout_view(r))
        return _exit_of(r)

    def fetch(self) -> tuple[RolloutPublic, Any]:
        return self.api.get_as(RolloutPublic, "/v1/rollouts/{}", self.rollout_id)

    def pause(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise InputError(f"rollout {self.rollout_id} is still in progress (--timeout reached)")
        time.sleep(self.interval)


def _exit_of(r: RolloutPublic) -> int:
    return 0 if r.state == "completed" else EXIT_ROLLOUT_FAILED
