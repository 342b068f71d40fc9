"""The attacks of issue 11, each against a live fleet, each answering whether it was stopped.

A fleet here (``AttackFleet``) is what the attacks scenario (``cloud.demo.attacks_scenario``)
starts: a redis-server, a TUF repository made by ``init_fleet``, a trainer holding
the targets key, a rollout controller holding the director key, and edge daemons,
each enrolled (its own Redis user and key), trusting the fleet's TUF root, one of
them connected through a ``StallProxy``. Exactly one version is *authorized*: the
one the director orders and the targets list. Every attack tries to make an edge
serve something else (or to poison what the cloud learns, or to hurt Redis), and
is stopped when every edge keeps serving the authorized version and the refusal
the design promises is seen: a counter, a dead letter, a ``NOPERM``, a ``stale``.

Each attack leaves the fleet as it found it (metadata restored, newer when the
edges may have trusted a newer version of it), so that the next one starts from
the same state and the scenario's normal loop (predictions, feedback, training
data) runs through all of them. The helpers that forge things (``forge_targets``,
``signed_variant``, ``feedback_fields``) are shared with the tests in
``tests/security``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from cloud.demo.attacks.devices import (
    device_script_and_oversized,
    forged_feedback,
    forged_status,
    plaintext_production,
)
from cloud.demo.attacks.fleet import WATCH_S, AttackFleet, AttackResult
from cloud.demo.attacks.forge import (
    announce,
    dead_letters,
    feedback_fields,
    forge_targets,
    restore_targets,
    signed_variant,
)
from cloud.demo.attacks.updates import (
    endless_metadata,
    freeze,
    other_fleet,
    raw_rollback_write,
    replayed_announcement,
    replayed_order,
    rotated_out_key,
    slow_retrieval,
    snapshot_mix,
    trainer_key_alone,
    unsigned_announcement,
    wrong_key,
)

__all__ = [
    "ATTACKS",
    "WATCH_S",
    "AttackFleet",
    "AttackResult",
    "announce",
    "dead_letters",
    "feedback_fields",
    "forge_targets",
    "restore_targets",
    "run_attack",
    "signed_variant",
]

logger = logging.getLogger(__name__)

#: The scenario's attacks, in the order it runs them.
ATTACKS: list[Callable[[AttackFleet], AttackResult]] = [
    unsigned_announcement,
    wrong_key,
    replayed_announcement,
    raw_rollback_write,
    replayed_order,
    freeze,
    other_fleet,
    snapshot_mix,
    endless_metadata,
    slow_retrieval,
    trainer_key_alone,
    rotated_out_key,
    forged_status,
    forged_feedback,
    device_script_and_oversized,
    plaintext_production,
]


def run_attack(fleet: AttackFleet, attack: Callable[[AttackFleet], AttackResult]) -> AttackResult:
    """One attack; an attack that fails to run is reported as not stopped, with why."""
    fleet.mark()
    try:
        return attack(fleet)
    except Exception as e:
        logger.exception("attack %s did not run", attack.__name__)
        return AttackResult(attack.__name__, False, f"did not run: {type(e).__name__}: {e}")
