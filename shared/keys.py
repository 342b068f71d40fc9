"""Every Redis key and stream name edgeloop uses, and nothing else.

All names of one fleet carry the hash tag ``{<fleet>}`` so that they land on one
Redis Cluster slot, which keeps MULTI/EXEC and Lua scripts over them legal.

>>> k = FleetKeys("lab")
>>> k.feedback
'el:{lab}:feedback'
>>> k.feedback_of("vibration")
'el:{lab}:feedback:vibration'
>>> legacy_feedback_group("vibration")
'trainers:vibration'
>>> k.artifact("ab" * 32)[:22]
'el:{lab}:artifact:abab'
"""

from __future__ import annotations

import re

PREFIX = "el"

#: Consumer group a model's trainers read the model's own feedback stream with
#: (``FleetKeys.feedback_of``); before streams per model, the group of the fleet-wide one.
FEEDBACK_GROUP = "trainers"

#: Fields of a feedback stream entry: edges send a batch of ``FeedbackEvent``
#: JSON documents, one per line, in ``events``; an entry may also carry a single
#: event in ``data`` (edges before batched entries, tools).
FEEDBACK_BATCH_FIELD = "events"
FEEDBACK_EVENT_FIELD = "data"
#: Events with their samples as raw bytes: length-prefixed frames, one after another
#: (``shared.feedback_stream``); what edges send for tensor inputs.
FEEDBACK_FRAMES_FIELD = "frames"

#: Prefixes of the key families (a name part follows them): what ``FleetKeys.family`` globs.
FAMILIES = (
    "feedback", "device", "device-sig", "artifact", "patch", "weights", "tuf", "director",
    "manifest", "seen", "replay", "holdout", "recent", "trainer", "trainer-lock", "versions",
    "version-records", "labels", "target", "assign", "pins", "rollout", "active-rollout",
    "pending", "pending-devices", "device-tags", "recent-devices", "agreement", "quarantine",
    "quarantined",
)  # fmt: skip

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe name for a key part, else raise ValueError."""
    if not _NAME.match(value):
        raise ValueError(
            f"invalid {kind} {value!r}: use 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit"
        )
    return value


def legacy_feedback_group(model: str) -> str:
    """The consumer group ``model``'s trainers read the fleet-wide stream ``FleetKeys.feedback``
    with (edges that predate streams per model write there): a group per model, since each
    model's trainers must see every entry, and skip (and ack) the events of other models."""
    return f"{FEEDBACK_GROUP}:{check_name('model', model)}"


class FleetKeys:
    """The names of one fleet's streams and keys."""

    def __init__(self, fleet: str) -> None:
        self.fleet = check_name("fleet", fleet)
        self._p = f"{PREFIX}:{{{fleet}}}"

    def family(self, name: str) -> str:
        """The glob of every key of one family of this fleet (``artifact``, ``pins``, ...),
        for ACL rules: ``family("pins")`` matches ``pins(model)`` for every model.

        >>> FleetKeys("lab").family("pins")
        'el:{lab}:pins:*'
        """
        if name not in FAMILIES:
            raise ValueError(f"{name!r} is not a key family; one of {', '.join(FAMILIES)}")
        return f"{self._p}:{name}:*"

    def owns(self, key: str) -> bool:
        """True for a key of this fleet: a key named on the wire (an announcement's
        payload) is read only if it is one.

        >>> FleetKeys("lab").owns("el:{lab}:artifact:ab"), FleetKeys("lab").owns("el:{x}:a")
        (True, False)
        """
        return key.startswith(self._p + ":")

    # Streams
    @property
    def feedback(self) -> str:
        """Labeled feedback from the edges (XADD by edges, XREADGROUP by trainers)."""
        return f"{self._p}:feedback"

    def feedback_of(self, model: str) -> str:
        """Labeled feedback for one model (XADD by edges, XREADGROUP by that model's
        trainers): a fleet with several models keeps one stream and one consumer group per
        model, so one model's trainer never reads another's events. ``feedback`` stays
        the stream of edges that predate per-model streams; each trainer still reads it."""
        return f"{self._p}:feedback:{check_name('model', model)}"

    @property
    def deltas(self) -> str:
        """Announcements of new model versions (XADD by the publisher, XREAD by edges)."""
        return f"{self._p}:deltas"

    @property
    def status(self) -> str:
        """Edge status reports, a capped history."""
        return f"{self._p}:status"

    @property
    def deadletter(self) -> str:
        """Feedback the trainer refused, with the reason."""
        return f"{self._p}:deadletter"

    # Plain keys
    def device(self, device_id: str) -> str:
        """Latest status of one device; expires when the device goes quiet."""
        return f"{self._p}:device:{check_name('device id', device_id)}"

    @property
    def devices(self) -> str:
        """Sorted set of device ids by last-seen time."""
        return f"{self._p}:devices"

    # Fleet figures kept as statuses are written (cloud/registry/fleet_counts.py): the API's
    # status relay and the controller's fold of the status stream write them, through one
    # Lua script; ``GET /v1/fleet`` and ``/metrics`` read them. No edge touches them.
    @property
    def fleet_counts(self) -> str:
        """Hash of bucket -> devices (or summed counter): ``devices``, ``vh:<version>|<health>``,
        ``model:<m>``, ``mv:<m>|<version>``, ``e:<counter>``, ``reason:<r>``."""
        return f"{self._p}:fleet-counts"

    @property
    def counted(self) -> str:
        """Hash of device id -> what the device is counted as (JSON: the status stream id
        it was counted at, its buckets), so that a report moves it between buckets once."""
        return f"{self._p}:counted"

    @property
    def counted_live(self) -> str:
        """Sorted set of the devices counted online, by when their device key expires:
        the oldest are checked and counted offline once their key is gone."""
        return f"{self._p}:counted-live"

    @property
    def counted_stale(self) -> str:
        """Set of the online devices that report stale update metadata."""
        return f"{self._p}:counted-stale"

    @property
    def counted_ids(self) -> str:
        """Sorted set of every counted device id, all with score 0: ``GET /v1/devices``
        pages through it by id (ZRANGEBYLEX), so a walk sees each device once."""
        return f"{self._p}:counted-ids"

    @property
    def counts_cursor(self) -> str:
        """The last status stream entry id folded into the counts (the controller and the
        API's reads advance it)."""
        return f"{self._p}:counts-cursor"

    @property
    def counts_folded(self) -> str:
        """Set, with a lifetime of a few controller steps, by each controller step that
        brought the counts up to date: while it lives, reads trust the counts as they are
        and fold nothing themselves (``FleetCounts.read_refresh``)."""
        return f"{self._p}:counts-folded"

    @property
    def counts_repair(self) -> str:
        """ZSCAN cursor of a repair walk over ``devices``, while one runs: set when the
        status stream was trimmed past ``counts_cursor`` (reports were never folded)."""
        return f"{self._p}:counts-repair"

    def artifact(self, sha256: str) -> str:
        """A full model artifact, zstd-compressed."""
        return f"{self._p}:artifact:{sha256}"

    def patch(self, base_sha256: str, target_sha256: str) -> str:
        """A patch that turns ``base`` into ``target``."""
        return f"{self._p}:patch:{base_sha256}:{target_sha256}"

    def weights(self, sha256: str) -> str:
        """The float weights a published version was exported from (the trainer's next parent)."""
        return f"{self._p}:weights:{sha256}"

    def tuf_metadata(self, filename: str) -> str:
        """A TUF metadata file of the fleet's repository (``root.json``, ``3.root.json``,
        ``targets.json``, ``snapshot.json``, ``timestamp.json``); see cloud/registry/tuf_repo.py.
        """
        return f"{self._p}:tuf:{filename}"

    def director(self, model: str) -> str:
        """Hash of signed director orders of ``model``, one field per scope (shared/director.py)."""
        return f"{self._p}:director:{model}"

    @property
    def director_counter(self) -> str:
        """Hash of the last director counter per model (only the controller writes it)."""
        return f"{self._p}:director_counter"

    def manifest(self, sha256: str) -> str:
        """The signed manifest of a model version."""
        return f"{self._p}:manifest:{sha256}"

    @property
    def manifest_archive(self) -> str:
        """Hash of version sha256 -> sha256 of its signed manifest's bytes in the registry's
        blob store: the manifests of versions whose payloads left Redis
        (cloud/registry/collect.py), read back from there."""
        return f"{self._p}:manifest-archive"

    @property
    def seen(self) -> str:
        """Hash of feedback idempotency watermarks, one field per device stream: the one
        model's, before watermarks per model (a trainer takes it over as ``seen_of``)."""
        return f"{self._p}:seen"

    def seen_of(self, model: str) -> str:
        """Hash of ``model``'s feedback idempotency watermarks, one field per device stream;
        for both of its streams (``feedback_of`` and ``feedback``), written by its trainers."""
        return f"{self._p}:seen:{check_name('model', model)}"

    def replay(self, model: str) -> str:
        """Hash holding the replay buffer's slots and counters for ``model``."""
        return f"{self._p}:replay:{check_name('model', model)}"

    def holdout(self, model: str) -> str:
        """Hash holding the held-out evaluation reservoir for ``model``."""
        return f"{self._p}:holdout:{check_name('model', model)}"

    def recent(self, model: str) -> str:
        """List of the most recent labeled samples for ``model`` (newest first)."""
        return f"{self._p}:recent:{check_name('model', model)}"

    # Limits against poisoning (cloud/data/admission.py, cloud/data/quarantine.py)
    def pending(self, model: str, device_id: str) -> str:
        """List of one device's accepted training samples of ``model`` waiting for a round
        to admit them (RPUSH by ingest, LRANGE + LTRIM by the round's admission): what the
        per-device share cap held back stays here, oldest first."""
        return (
            f"{self._p}:pending:{check_name('model', model)}:{check_name('device id', device_id)}"
        )

    def pending_devices(self, model: str) -> str:
        """Set of the devices with samples of ``model`` in ``pending``."""
        return f"{self._p}:pending-devices:{check_name('model', model)}"

    def device_tags(self, model: str) -> str:
        """Hash of holdout slot -> the device whose sample fills it (ingest writes it with
        the slot), so that the gate can cap one device's weight."""
        return f"{self._p}:device-tags:{check_name('model', model)}"

    def recent_devices(self, model: str) -> str:
        """List of the devices of ``recent`` (same order and length, newest first)."""
        return f"{self._p}:recent-devices:{check_name('model', model)}"

    def agreement(self, model: str) -> str:
        """Hash of per-device label checks against the trainer's model: ``n:<device>``
        samples checked, ``k:<device>`` of them disagreeing (HINCRBY by the trainer)."""
        return f"{self._p}:agreement:{check_name('model', model)}"

    def quarantine(self, model: str) -> str:
        """Hash of device id -> ``QuarantineRecord`` (JSON): devices whose feedback for
        ``model`` is kept aside, not trained on (the trainer writes, an admin releases)."""
        return f"{self._p}:quarantine:{check_name('model', model)}"

    def quarantined(self, model: str, device_id: str) -> str:
        """List of a quarantined device's kept samples of ``model`` (the pending format),
        oldest first; a release moves them back to ``pending``."""
        return (
            f"{self._p}:quarantined:{check_name('model', model)}:"
            f"{check_name('device id', device_id)}"
        )

    def trainer(self, model: str) -> str:
        """The trainer's published state for ``model`` (JSON)."""
        return f"{self._p}:trainer:{check_name('model', model)}"

    def trainer_lock(self, model: str) -> str:
        """Lease that lets one trainer at a time run rounds for ``model``."""
        return f"{self._p}:trainer-lock:{check_name('model', model)}"

    def versions(self, model: str) -> str:
        """Sorted set of published version numbers -> sha256 for ``model``."""
        return f"{self._p}:versions:{check_name('model', model)}"

    # The registry (cloud/registry/versions.py)
    @property
    def models(self) -> str:
        """Set of the model names that have at least one published version."""
        return f"{self._p}:models"

    def version_records(self, model: str) -> str:
        """Hash of sha256 -> ``VersionRecord`` (JSON) for every version of ``model``."""
        return f"{self._p}:version-records:{check_name('model', model)}"

    def labels(self, model: str) -> str:
        """Hash of label (``latest``, ``stable``, ...) -> sha256 for ``model``."""
        return f"{self._p}:labels:{check_name('model', model)}"

    # Rollouts (cloud/rollout/): what each device should serve.
    def target(self, model: str) -> str:
        """The sha256 every device of the fleet serves unless pinned or in a rollout ring."""
        return f"{self._p}:target:{check_name('model', model)}"

    def assignments(self, model: str) -> str:
        """Hash of device id -> sha256 set by a running rollout (its rings)."""
        return f"{self._p}:assign:{check_name('model', model)}"

    def pins(self, model: str) -> str:
        """Hash of device id -> sha256 an operator pinned; rollouts leave these alone."""
        return f"{self._p}:pins:{check_name('model', model)}"

    def rollout(self, rollout_id: str) -> str:
        """One rollout's state (JSON)."""
        return f"{self._p}:rollout:{check_name('rollout id', rollout_id)}"

    def gate_book(self, rollout_id: str) -> str:
        """Hash of a rollout's running stage's gate figures (cloud/rollout/gate_book.py):
        ``d:<device>`` -> what each ring device on B counts for, and the sums."""
        return f"{self._p}:gate-book:{check_name('rollout id', rollout_id)}"

    def gate_p99(self, rollout_id: str) -> str:
        """Sorted set of a rollout's running stage's devices on B by their p99 latency."""
        return f"{self._p}:gate-p99:{check_name('rollout id', rollout_id)}"

    @property
    def rollouts(self) -> str:
        """Sorted set of rollout ids by creation time."""
        return f"{self._p}:rollouts"

    def active_rollout(self, model: str) -> str:
        """The id of the rollout in progress for ``model``, if any (one at a time)."""
        return f"{self._p}:active-rollout:{check_name('model', model)}"

    # Device identity (cloud/registry/devices.py): who may write as which device.
    def device_sig(self, device_id: str) -> str:
        """The device's Ed25519 signature of its latest status (``device``), same TTL."""
        return f"{self._p}:device-sig:{check_name('device id', device_id)}"

    @property
    def device_registry(self) -> str:
        """Hash of device id -> ``EnrolledDevice`` (JSON: its public key and Redis user).
        Written only by the cloud (``edgeloop device enroll|revoke``); no device may write it."""
        return f"{self._p}:device-registry"

    def device_user(self, device_id: str) -> str:
        """The Redis ACL user of one enrolled device.

        >>> FleetKeys("lab").device_user("pi-07")
        'device~lab~pi-07'
        """
        return f"device~{self.fleet}~{check_name('device id', device_id)}"

    # API access (cloud/api/tokens.py): bearer tokens, stored hashed.
    @property
    def tokens(self) -> str:
        """Hash of token digest (HMAC-SHA256 under the API's pepper) -> ``TokenRecord`` (JSON)."""
        return f"{self._p}:tokens"

    @property
    def token_names(self) -> str:
        """Hash of token name -> digest: names are unique, and a token is revoked by name."""
        return f"{self._p}:token-names"
