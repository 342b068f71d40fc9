"""Attacks by or on devices: forged status and feedback, a device's scripts and oversized
writes, and plaintext in production.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable

import redis

from cloud.demo.attacks.fleet import AttackFleet, AttackResult
from cloud.demo.attacks.forge import (
    dead_letters,
    event,
    feedback_fields,
    last_id,
)
from shared.device_identity import DeviceKeyring, DeviceSigner
from shared.messages import DeadLetter, EdgeStatus
from shared.status_report import add_status, verified_statuses

logger = logging.getLogger(__name__)


def forged_status(fleet: AttackFleet) -> AttackResult:
    """Forged device status: one device writing another's, and reports with a
    signature of the wrong device or none, as the rollout gates read them."""
    a, b = sorted(fleet.devices)[:2]
    device_b = fleet.device_client(b)
    try:
        device_b.set(fleet.keys.device(a), b"{}")
        acl = False
    except redis.exceptions.NoPermissionError:
        acl = True
    finally:
        device_b.close()
    keyring = DeviceKeyring(fleet.client, fleet.keys)
    refused: dict[str, str] = {}
    for _ in range(5):  # the real edge rewrites its report every second: read ours back
        for device, signer in (
            (a, DeviceSigner(fleet.keys.fleet, a, fleet.devices[b].private_key)),
            ("edge-phantom", None),
        ):
            status = EdgeStatus(
                device_id=device,
                fleet=fleet.keys.fleet,
                model=fleet.model,
                sha256="ab" * 32,
                state="serving",
                ts=time.time(),
            )
            pipe = fleet.client.pipeline()
            add_status(pipe, fleet.keys, status, ttl_s=60, maxlen=10_000, signer=signer)
            pipe.execute()
        _, refused = verified_statuses(fleet.client, fleet.keys, [a, "edge-phantom"], keyring)
        if a in refused:
            break
    fleet.client.delete(fleet.keys.device("edge-phantom"), fleet.keys.device_sig("edge-phantom"))
    return AttackResult(
        "forged device status",
        acl and len(refused) == 2,
        f"{b} writing {a}'s status: {'NOPERM' if acl else 'allowed'}; a report for {a} "
        f"signed with {b}'s key and an unsigned one of a phantom device: "
        + "; ".join(f"{d}: {why}" for d, why in sorted(refused.items())),
    )


def forged_feedback(fleet: AttackFleet) -> AttackResult:
    """Forged feedback: a device's own credentials writing events under another id,
    signed with its own key, and an unsigned entry; the trainer dead-letters both."""
    a, b = sorted(fleet.devices)[:2]
    since = last_id(fleet.client, fleet.keys.deadletter)
    stream = fleet.keys.feedback_of(fleet.model)
    device_b = fleet.device_client(b)
    events = [event(fleet, a, n) for n in range(3)]
    device_b.xadd(
        stream, feedback_fields(fleet.keys.fleet, a, fleet.devices[b].private_key, events)
    )
    device_b.xadd(stream, feedback_fields(fleet.keys.fleet, a, None, events))
    device_b.close()
    fleet.forged_events += 2  # the trainer dead-letters each entry whole

    def dead() -> list[DeadLetter]:
        return [d for d in dead_letters(fleet.client, fleet.keys, since) if ":forged:" in d.payload]

    seen = fleet.wait(lambda: len(dead()) >= 2, 20)
    reasons = sorted({d.reason for d in dead()})
    return AttackResult(
        "forged device feedback",
        seen,
        f"{b} sent events of {a} signed with its own key, and unsigned: "
        f"both entries dead-lettered ({'; '.join(reasons)})",
    )


def device_script_and_oversized(fleet: AttackFleet) -> AttackResult:
    """A device's Lua script and oversized writes: its ACL user refuses scripting and
    any write outside its own keys; an oversized event it may append is dead-lettered."""
    device = sorted(fleet.devices)[0]
    client = fleet.device_client(device)
    big = b"x" * (2 * 1024 * 1024)
    tries: dict[str, Callable[[], object]] = {
        "EVAL": lambda: client.eval("while true do end", 0),
        "SCRIPT LOAD": lambda: client.script_load("return 1"),
        "FUNCTION LOAD": lambda: client.execute_command(  # type: ignore[no-untyped-call]
            "FUNCTION", "LOAD", "#!lua name=x\nredis.register_function('f', function() end)"
        ),
        "SET 2 MiB on the target": lambda: client.set(fleet.keys.target(fleet.model), big),
        "APPEND 2 MiB to its status": lambda: client.append(fleet.keys.device(device), big),
        "XADD 2 MiB to the deltas": lambda: client.xadd(fleet.keys.deltas, {"data": big}),
    }
    refused = []
    for name, attempt in tries.items():
        try:
            attempt()
        except redis.exceptions.NoPermissionError:
            refused.append(name)
    # What the ACL cannot bound: the size of an append to the device's own feedback
    # stream. The trainer refuses it, whole, with the reason.
    since = last_id(fleet.client, fleet.keys.deadletter)
    big_event = event(fleet, device, 99, x=[0.0] * 64, note="y" * (256 * 1024))
    client.xadd(
        fleet.keys.feedback_of(fleet.model),
        feedback_fields(fleet.keys.fleet, device, fleet.devices[device].private_key, [big_event]),
    )
    client.close()
    fleet.forged_events += 1

    def oversize() -> bool:
        return any("oversize" in d.reason for d in dead_letters(fleet.client, fleet.keys, since))

    dead = fleet.wait(oversize, 20)
    return AttackResult(
        "a device's Lua script and oversized writes",
        len(refused) == len(tries) and dead,
        f"NOPERM for {', '.join(refused)}; a 256 KiB event appended to its own feedback "
        f"stream {'dead-lettered as oversize' if dead else 'NOT dead-lettered'}",
    )


def plaintext_production(fleet: AttackFleet) -> AttackResult:
    """Plaintext in production: an edge told to reach a remote Redis without TLS."""
    config = fleet.workdir / "plaintext-edge.toml"
    config.write_text(
        "\n".join(
            [
                'mode = "production"',
                'device_id = "edge-plaintext"',
                f'fleet = "{fleet.keys.fleet}"',
                'redis_url = "redis://:secret@198.51.100.7:6379/0"',
                f'public_key = "{fleet.workdir / "keys" / "signing.pub"}"',
                f'state_dir = "{fleet.workdir / "edge-plaintext"}"',
                "",
            ]
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = (proc.stderr + proc.stdout).strip().splitlines()
    line = next((s for s in said if "plaintext" in s), said[-1] if said else "")
    return AttackResult(
        "plaintext in production",
        proc.returncode != 0 and "plaintext" in line and "secret" not in proc.stderr,
        f"an edge in production with redis:// to a remote host: exit {proc.returncode}, "
        f"{line.strip()[:160]}",
    )
