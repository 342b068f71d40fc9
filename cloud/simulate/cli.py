"""``edgeloop simulate``: N simulated devices (``cloud.simulate.devices``) in a few
processes against the real cloud — a redis-server (or the ``--redis-url`` given, a
Redis Cluster's ``redis+cluster://`` too), one ``edgeloop trainer`` per fleet and
model, ``edgeloop api`` under uvicorn and ``edgeloop controller`` — started as the
demo starts them (``cloud.demo.services``), and what it measured.

The run: the cloud comes up and its trainers publish their first version; every
device converges on it and reports (Redis memory per device: INFO before and after);
every device sends ``--events`` labelled feedback events; the trainers take them and
round; each new version fans out to the fleet (time until 50% / 99% of the devices
serve it, from its announcement); then ``GET /v1/fleet`` and a paginated walk of
``GET /v1/devices`` are timed, the controller's step is timed on the same Redis, and
a staged rollout (canary, half, all) goes over the first fleet through the API.
With ``--minutes`` a soak follows: every device sends its events each minute and
Redis memory is sampled (its slope after warm-up). The books: every device
reported, every event accepted once, every device on a new version, the rollout
complete on every device. The last line of ``--json`` is the figures
(docs/ARCHITECTURE.md, "A simulated fleet").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from shared.errors import InputError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--devices", type=int, required=True, help="simulated devices (N >= 1)")
    p.add_argument("--fleets", type=int, default=1, help="fleets the devices are spread over")
    p.add_argument("--models", type=int, default=1, help="models per fleet (a trainer each)")
    p.add_argument("--events", type=int, default=5, help="feedback events per device")
    p.add_argument("--processes", type=int, default=2, help="processes the devices run in")
    p.add_argument("--redis-url", help="an existing Redis (default: a private redis-server)")
    p.add_argument(
        "--fleet-prefix", default="sim", help="the fleets are named <prefix>0, <prefix>1, ..."
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds for the whole fan-out")
    p.add_argument(
        "--minutes",
        type=float,
        default=0.0,
        help="then soak: every device sends its events each minute for this long, "
        "and Redis memory is sampled (its slope after warm-up is reported)",
    )
    p.add_argument(
        "--no-rollout",
        dest="rollout",
        action="store_false",
        help="skip the staged rollout over the fleet at the end",
    )
    p.add_argument("--json", action="store_true", help="one JSON document per line")
    p.add_argument("--keep", action="store_true", help="keep the work dir and its logs")


def check_args(args: argparse.Namespace) -> None:
    """Bad input, before anything is started (InputError: one line, exit 2)."""
    if args.devices < 1:
        raise InputError(f"--devices must be at least 1, not {args.devices}")
    if args.fleets < 1 or args.fleets > args.devices:
        raise InputError(f"--fleets must be 1..{args.devices} (the devices), not {args.fleets}")
    if args.models < 1 or args.models > 16:
        raise InputError(f"--models must be 1..16, not {args.models}")
    if args.events < 1:
        raise InputError(f"--events must be at least 1, not {args.events}")
    if args.processes < 1 or args.processes > 64:
        raise InputError(f"--processes must be 1..64, not {args.processes}")
    if not args.fleet_prefix.isalnum() or len(args.fleet_prefix) > 24:
        raise InputError(
            f"--fleet-prefix must be 1..24 letters or digits, not {args.fleet_prefix!r}"
        )
    if args.minutes < 0 or args.minutes > 24 * 60:
        raise InputError(f"--minutes must be 0..1440, not {args.minutes}")
    if args.timeout <= 0:
        raise InputError(f"--timeout must be positive, not {args.timeout}")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    from cloud.simulate.fleet import SimulatedFleet

    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-simulate-"))
    sim = SimulatedFleet(args, workdir)
    try:
        figures = sim.run()
    finally:
        sim.close()
        if args.keep:
            print(f"logs and state kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>34}: {v}")
    return 0 if figures["books_balance"] else 1
