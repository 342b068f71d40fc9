"""A running stage's gate figures, kept up to date as its ring's reports arrive.

The controller used to read and verify every ring device's report at each step and to
keep each device's counters in the rollout's record: a step cost O(ring) (1.3 to 2.2 s
and a 5 MB record for a ring of 10 000 devices). A stage's figures now live in Redis
beside the rollout, under the fleet's hash tag:

- ``FleetKeys.gate_book(rollout)``, a hash: ``a``, A's figures, read once when the stage
  begins (its one O(ring) read); ``d:<device>``, for each ring device seen serving B, its
  counters when it switched and what it counts for now (its counters since then); ``b``,
  the sums of those (``OnB``); ``cursor``, the status stream entry they include reports
  up to; ``stage``, the stage they are of.
- ``FleetKeys.gate_p99(rollout)``, the devices on B by their p99 (a largest value cannot
  be kept as a sum).

Each step reads the status stream after ``cursor``, keeps the latest report of each ring
device, checks its signature once the fleet has enrolled devices (as the gates always
did: a report counts only signed by its device), and moves each device's share of the
sums from what it counted for to what it counts for now: a step costs O(reports since the
last one), whatever the ring's size. The book is written in the step's transaction, with
the rollout's record: a step and its figures commit together or not at all, and of two
controllers stepping at once one retries on the new state.

A stream trimmed past ``cursor`` (reports the book never read), or a running stage without
a book (a rollout started by a controller from before books), is rebuilt from the ring's
device keys: the one O(ring) path besides a stage's start, logged. A device's last report
on B counts until it reports again (an offline device's counters on B stay in the sums).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import redis

from cloud.rollout.health import OnA, OnB, on_a, sample_of, since, witnesses
from shared import replies
from shared.device_identity import DEVICE_FIELD, SIG_FIELD, STATUS, DeviceKeyring
from shared.errors import MessageError
from shared.keys import FleetKeys
from shared.messages import EdgeStatus
from shared.rollouts import DeviceSample, Rollout, StageState
from shared.status_report import STATUS_FIELD

logger = logging.getLogger(__name__)

#: Reads the ring devices' verified reports from their device keys (None: offline).
ReadStatuses = Callable[[list[str]], dict[str, EdgeStatus | None]]


@dataclass
class _Entry:
    """A ring device on B: its counters when it switched, and since then."""

    base: DeviceSample
    since: DeviceSample
    witness: bool

    def to_wire(self) -> str:
        return json.dumps(
            {"b": self.base.model_dump(), "s": self.since.model_dump(), "w": self.witness}
        )

    @classmethod
    def from_wire(cls, raw: bytes | str) -> _Entry:
        d = json.loads(raw)
        return cls(DeviceSample(**d["b"]), DeviceSample(**d["s"]), bool(d["w"]))


#: A device's sample on the rollout's model, and its last error (why it left B, if it did).
_Sample = tuple[DeviceSample, str]


def _samples_of(
    r: Rollout, statuses: Iterable[tuple[str, EdgeStatus | None]]
) -> list[tuple[str, _Sample]]:
    out = []
    for device, status in statuses:
        on = status.serving(r.model) if status is not None else None
        if status is not None and on is not None:
            out.append((device, (sample_of(on, ts=status.ts), on.last_error or "")))
    return out


@dataclass
class _Book:
    stage: int
    cursor: str
    a: OnA
    b: OnB
    entries: dict[str, _Entry]  # the devices read this step (all of them when rebuilt)
    p99: dict[str, float]  # their new p99s


class GateBook:
    """The figures of each running stage, kept by the controller's steps."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        keyring: DeviceKeyring,
        read: ReadStatuses,
        refused: Counter[str],
        *,
        batch: int = 1000,
        rounds: int = 50,
    ) -> None:
        self.client, self.keys, self.keyring, self.read = client, keys, keyring, read
        #: Reports the gates ignored, by reason (shared with the controller's).
        self.refused = refused
        #: Status stream entries read per XRANGE, and XRANGEs per step at most: reports
        #: past that wait for the next step.
        self.batch, self.rounds = batch, rounds
        #: Books rebuilt from the device keys (a trimmed stream, a stage without a book).
        self.rebuilt = 0

    # -- a stage begins --------------------------------------------------------

    def start(self, pipe: Any, r: Rollout, index: int) -> None:
        """Open the book of ``r``'s stage ``index``: A's figures from its ring's reports
        now, and its devices already on B counted from now. Queued on ``pipe`` (MULTI)."""
        stage = r.stages[index]
        cursor = self._stream_end()  # before the reads: later reports are the steps'
        samples = self._samples(r, stage.devices)
        book = _Book(index, cursor, on_a([s for _, (s, _) in samples]), OnB(), {}, {})
        self._apply(book, r, samples, {})
        pipe.delete(self.keys.gate_book(r.id), self.keys.gate_p99(r.id))
        self._write(pipe, r, book)

    def close(self, pipe: Any, r: Rollout) -> None:
        """Drop ``r``'s book (the rollout ended)."""
        pipe.delete(self.keys.gate_book(r.id), self.keys.gate_p99(r.id))

    # -- each step -------------------------------------------------------------

    def advance(self, pipe: Any, r: Rollout) -> tuple[OnA, OnB]:
        """Bring the running stage's figures up to date with the reports since the last
        step (queued on ``pipe``, a MULTI); A's and B's figures."""
        key = self.keys.gate_book(r.id)
        stage_raw, cursor_raw, a_raw, b_raw = self.client.hmget(key, "stage", "cursor", "a", "b")
        if stage_raw is None or int(stage_raw) != r.current or a_raw is None or b_raw is None:
            return self._rebuild(pipe, r, "the stage has no book")
        cursor = replies.text(cursor_raw) if cursor_raw is not None else "0-0"
        reports, last, gap = self._reports(cursor, set(r.stages[r.current].devices))
        if gap is not None:
            return self._rebuild(pipe, r, f"the status stream was trimmed past it ({gap})")
        book = _Book(r.current, last, OnA(**json.loads(a_raw)), OnB(**json.loads(b_raw)), {}, {})
        samples = _samples_of(r, ((s.device_id, s) for s in reports))
        old = self._entries(r, {d for d, _ in samples})
        self._apply(book, r, samples, old)
        self._write(pipe, r, book)
        return book.a, book.b

    # -- reading ---------------------------------------------------------------

    def _stream_end(self) -> str:
        last = self.client.xrevrange(self.keys.status, "+", "-", count=1)
        return replies.text(last[0][0]) if last else "0-0"

    def _samples(self, r: Rollout, devices: list[str]) -> list[tuple[str, _Sample]]:
        return _samples_of(r, self.read(devices).items())

    def _reports(self, cursor: str, ring: set[str]) -> tuple[list[EdgeStatus], str, str | None]:
        """The ring's verified reports after ``cursor`` in stream order, the last entry
        read, and the stream's first entry if it was trimmed past ``cursor``."""
        try:
            info = replies.stream_info(
                self.client.execute_command("XINFO", "STREAM", self.keys.status)  # type: ignore[no-untyped-call]
            )
        except redis.ResponseError:  # no stream yet: no reports
            return [], cursor, None
        first = replies.trimmed_to(info)
        if first is not None and replies.id_newer(first, cursor) and cursor != "0-0":
            return [], cursor, first
        enforcing = self.keyring.enforcing
        reports: list[EdgeStatus] = []
        for _ in range(self.rounds):
            entries: list[Any] = list(
                self.client.xrange(self.keys.status, f"({cursor}", "+", count=self.batch) or []
            )
            for _, fields in entries:
                status = self._verified(fields, ring, enforcing)
                if status is not None:
                    reports.append(status)
            if entries:
                cursor = replies.text(entries[-1][0])
            if len(entries) < self.batch:
                break
        return reports, cursor, None

    def _verified(
        self, fields: dict[bytes, Any], ring: set[str], enforcing: bool
    ) -> EdgeStatus | None:
        raw = fields.get(STATUS_FIELD.encode())
        if raw is None:
            return None
        try:
            status = EdgeStatus.from_wire(raw)
        except MessageError:
            return None
        if status.device_id not in ring:
            return None
        if enforcing:
            signer = fields.get(DEVICE_FIELD.encode())
            device = replies.text(signer) if signer is not None else None
            why = self.keyring.check(STATUS, device, raw, fields.get(SIG_FIELD.encode()))
            if why is None and device != status.device_id:
                why = f"signed by {device}, not by the device it names"
            if why is not None:
                self.refused[why.split(":")[0]] += 1
                logger.warning("rollout gate: ignoring a report of %s: %s", status.device_id, why)
                return None
        return status

    def _entries(self, r: Rollout, devices: Iterable[str]) -> dict[str, _Entry]:
        devices = list(devices)
        if not devices:
            return {}
        raws = self.client.hmget(self.keys.gate_book(r.id), [f"d:{d}" for d in devices])
        return {d: _Entry.from_wire(raw) for d, raw in zip(devices, raws, strict=True) if raw}

    # -- the sums --------------------------------------------------------------

    def _apply(
        self,
        book: _Book,
        r: Rollout,
        samples: list[tuple[str, _Sample]],
        entries: dict[str, _Entry],
    ) -> None:
        """Move each device's share of ``book.b`` to what each of its new samples says,
        in order (``entries``: the devices' entries so far, updated)."""
        b = book.b
        for device, (sample, last_error) in samples:
            entry = entries.get(device)
            if sample.sha256 != r.to_sha256:
                if entry is not None and b.left is None:  # it was on B: it went back
                    b.left, b.left_why = device, last_error
                continue
            if entry is None:
                entry = _Entry(base=sample, since=since(sample, sample), witness=False)
                b.devices += 1
                b.first_ts = sample.ts if b.first_ts is None else min(b.first_ts, sample.ts)
            else:
                b.add(entry.since, -1)
                b.witnesses -= entry.witness
            if sample.predictions < entry.base.predictions or sample.labeled < entry.base.labeled:
                # a restarted device: its counters start again from zero
                entry.base = DeviceSample(sha256=sample.sha256, ts=entry.base.ts)
            entry.since = since(sample, entry.base)
            entry.witness = witnesses(entry.since, r.gate)
            b.add(entry.since)
            b.witnesses += entry.witness
            entries[device] = book.entries[device] = entry
            if sample.p99_ms is not None:
                book.p99[device] = sample.p99_ms
        b.p99_ms = self._p99(r, book.p99)

    def _p99(self, r: Rollout, new: dict[str, float]) -> float | None:
        """The largest p99 on B: the devices' new values and the others' last ones."""
        top: list[Any] = list(
            self.client.zrevrange(self.keys.gate_p99(r.id), 0, len(new), withscores=True) or []
        )
        kept = [float(score) for member, score in top if replies.text(member) not in new]
        values = [*new.values(), *kept[:1]]
        return max(values) if values else None

    # -- writing ---------------------------------------------------------------

    def _write(self, pipe: Any, r: Rollout, book: _Book) -> None:
        b = asdict(book.b)
        b.pop("p99_ms")  # from gate_p99
        mapping = {
            "stage": book.stage,
            "cursor": book.cursor,
            "a": json.dumps(asdict(book.a)),
            "b": json.dumps(b),
            **{f"d:{d}": e.to_wire() for d, e in book.entries.items()},
        }
        pipe.hset(self.keys.gate_book(r.id), mapping=mapping)
        if book.p99:
            pipe.zadd(self.keys.gate_p99(r.id), book.p99)

    def _rebuild(self, pipe: Any, r: Rollout, why: str) -> tuple[OnA, OnB]:
        """The book from the ring's device keys (O(ring)): kept bases, A's figures kept (or,
        from a controller before books, taken from the rollout's record)."""
        self.rebuilt += 1
        stage: StageState = r.stages[r.current]
        logger.warning(
            "rollout %s, stage %s: %s; reading its %d devices again",
            r.id,
            stage.name,
            why,
            len(stage.devices),
        )
        key = self.keys.gate_book(r.id)
        stage_raw, a_raw = self.client.hmget(key, "stage", "a")
        same = stage_raw is not None and int(stage_raw) == r.current
        cursor = self._stream_end()
        samples = self._samples(r, stage.devices)
        if same and a_raw is not None:
            a = OnA(**json.loads(a_raw))
            old = self._entries(r, stage.devices)
        else:  # no book of this stage: the record's own samples, if it kept any
            a = on_a(list(stage.before.values()) or [s for _, (s, _) in samples])
            old = {
                d: _Entry(base=s, since=since(s, s), witness=False)
                for d, s in stage.switched.items()
            }
        b = OnB(devices=len(old), first_ts=min((e.base.ts for e in old.values()), default=None))
        zero = {d: _Entry(e.base, since(e.base, e.base), witness=False) for d, e in old.items()}
        for e in zero.values():  # each counts for nothing yet: the reads below move it
            b.add(e.since)
        book = _Book(r.current, cursor, a, b, dict(zero), {})
        self._apply(book, r, samples, zero)
        stage.before, stage.switched = {}, {}
        pipe.delete(key, self.keys.gate_p99(r.id))
        self._write(pipe, r, book)
        return book.a, book.b
