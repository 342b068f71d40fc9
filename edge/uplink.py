"""The feedback uplink: labeled samples from this edge to its model's feedback stream.

``submit`` never waits for the network. A sender thread waits for ``batch``
events (or what arrived within ``flush_ms``), takes everything queued and XADDs
it in one command (a script when it makes several entries) as stream entries of
up to ``batch`` events each, frames in the field ``frames``
(``shared.feedback_stream``: each event's JSON with its sample as raw bytes, so
that an image's or a window's event is about the tensor's own size). When Redis is unreachable, events go to the
on-disk spool instead; while the spool holds anything, new events go there too,
so that a device's events reach the stream in the order they were made. When
Redis comes back the spool is sent oldest first and each segment deleted once it
is in the stream. Redis runs each send whole or not at all, so a batch it
refused in part cannot be resent behind newer events it took.

Delivery is at-least-once: a connection lost before the reply resends that
batch. The trainer drops duplicates by ``event_id`` =
``<device>:<epoch>:<seq>``; ``edge.sequence`` makes sure ids never repeat.

Memory is bounded by ``queue_max``: a full queue spills to the spool from the
submitting thread (a local disk write, not a network wait). The spool is
bounded by ``spool_max_bytes``; beyond it events are dropped, counted and logged.
A spool the disk refuses (full, failing) loses nothing: what could not be written
stays in memory, oldest first, and is written or sent later; once memory is full
too, ``submit`` refuses the new event (``Unavailable``: the API answers 503, so the
client knows its truth was not taken). Only a process ending with its disk full
loses what it held in memory (logged and counted in ``dropped``).

Where the entries go is an ``EntrySink``: ``RedisSink`` (XADD, above) or, for an edge
with ``uplink = "http"``, ``edge.http_uplink.HttpSink`` (the same entries, signed the
same way, relayed by the cloud API). A sink that cannot deliver raises ``SinkDown``
(spool, retry with backoff); one whose far end refuses part of a batch for its content
returns those events with the reason, and the uplink moves them to ``state_dir/refused``
(``<n>.frames`` and ``<n>.reason``, bounded by ``spool_max_bytes`` too), logged and counted
in ``refused``: never retried, never lost silently.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge.connections import REDIS_ERRORS, FleetMember, describe
from edge.sequence import SeqCounter
from edge.spool import Spool
from shared.device_identity import FEEDBACK
from shared.durable import append_durably
from shared.errors import Unavailable
from shared.feedback_stream import ADD_FRAMES_SCRIPT, feedback_stream, frame, frame_entries
from shared.keys import FEEDBACK_FRAMES_FIELD
from shared.messages import FeedbackEvent
from shared.redis_client import wait_replicas
from shared.retry import Backoff

logger = logging.getLogger(__name__)


class SinkDown(Exception):
    """The sink could not deliver (unreachable, or refusing the credential): the events
    stay in the spool and are retried with backoff."""


@dataclass(frozen=True)
class Refusal:
    """Events the far end refused for what they are (never to be resent), and why."""

    lines: list[bytes]
    reason: str


class EntrySink(Protocol):
    """Where the uplink's entries go; ``name`` is what log lines call it."""

    name: str

    def add(self, lines: list[bytes]) -> list[Refusal]:
        """Deliver ``lines`` (frames) in order, whole or not at all per request; the
        refused ones. Raises SinkDown when nothing can be said to be delivered."""
        ...

    def close(self) -> None: ...


class RedisSink:
    """XADD to the model's feedback stream, whole or not at all (``_xadd`` says why)."""

    name = "Redis"

    def __init__(
        self, member: FleetMember, batch: int, wait_replicas: int = 0, wait_ms: int = 1000
    ) -> None:
        self._redis = member.connect()
        self._add_entries = self._redis.register_script(ADD_FRAMES_SCRIPT)
        self._signer = member.signer
        self._stream = feedback_stream(member.keys, member.model)
        self._batch = batch
        self._wait_replicas, self._wait_ms = wait_replicas, wait_ms

    def add(self, lines: list[bytes]) -> list[Refusal]:
        try:
            self._xadd(lines)
            self._wait_for_replicas()
        except REDIS_ERRORS as e:
            raise SinkDown(describe(e)) from e
        return []

    def _wait_for_replicas(self) -> None:
        """With ``wait_replicas``: WAIT until that many replicas hold the entries just
        added, else SinkDown (they stay spooled and are resent; the trainer drops the
        duplicates). Redis replicates asynchronously: without it, a master that dies
        after its reply loses what it had not yet passed on, and the spool has let go
        of it. WAIT counts the writes of its own connection, so it goes to the node of
        the stream on the connection the XADD just gave back (a pool hands out the most
        recently returned one, and only this thread uses the client)."""
        if self._wait_replicas <= 0:
            return
        acked = wait_replicas(self._redis, self._stream, self._wait_replicas, self._wait_ms)
        if acked < self._wait_replicas:
            raise SinkDown(
                f"{acked} of {self._wait_replicas} replicas acknowledged the feedback within "
                f"{self._wait_ms} ms; kept in the spool"
            )

    def _xadd(self, lines: list[bytes]) -> None:
        # Entries of ``batch`` events (shared.feedback_stream). All entries go in one
        # round trip: while the threads calling ``submit`` keep the interpreter
        # busy, each wait for the network costs this thread up to a GIL switch
        # interval (5 ms) to resume, so it must move what piled up meanwhile at
        # once, not a batch per round trip. And in one command, which Redis runs
        # whole or not at all: in a pipeline, the entries Redis refused (say, as
        # it finished loading after a restart) would be resent after the ones it
        # added, newer events first. Several entries take the script, which costs
        # Redis more per event than plain XADDs (its arguments are copied into
        # Lua and back), so one entry is a plain XADD.
        entries = frame_entries(lines, self._batch)
        if self._signer is not None:
            # An enrolled device may not run scripts (its ACL user has -@scripting):
            # MULTI/EXEC keeps the entries whole or not at all, each signed on its own.
            pipe = self._redis.pipeline(transaction=True)
            for entry in entries:
                fields = {FEEDBACK_FRAMES_FIELD: entry, **self._signer.fields(FEEDBACK, entry)}
                pipe.xadd(self._stream, fields)  # type: ignore[arg-type]
            pipe.execute()
        elif len(entries) == 1:
            self._redis.xadd(self._stream, {FEEDBACK_FRAMES_FIELD: entries[0]})
        else:
            self._add_entries(keys=[self._stream], args=entries)

    def close(self) -> None:
        self._redis.close()


@dataclass(frozen=True)
class UplinkPolicy:
    """How the uplink batches, buffers and retries (EdgeSettings ``feedback_*``
    and ``spool_max_bytes``)."""

    batch: int = 256
    flush_ms: float = 50.0
    queue_max: int = 10_000
    spool_max_bytes: int = 64 * 1024 * 1024
    #: Replicas that must hold a send before the spool lets go of it (Redis WAIT; 0: none).
    wait_replicas: int = 0
    wait_ms: int = 1000
    backoff: Backoff = field(default_factory=lambda: Backoff(base=0.2, cap=5.0))


class FeedbackUplink:
    """Queue, batch, send or spool feedback events; see the module docstring.

    ``epoch`` is the model store's (``<device>:<epoch>:<seq>`` ids); the sequence
    counter and the spool live in ``state_dir``.
    """

    def __init__(
        self,
        member: FleetMember,
        epoch: str,
        state_dir: Path,
        policy: UplinkPolicy | None = None,
        sink: EntrySink | None = None,
    ) -> None:
        policy = policy or UplinkPolicy()
        self._sink = (
            sink
            if sink is not None
            else RedisSink(member, policy.batch, policy.wait_replicas, policy.wait_ms)
        )
        self._refused_dir = Path(state_dir) / "refused"
        self._id_prefix = f"{member.device_id}:{epoch}:"
        self._seq = SeqCounter(Path(state_dir) / "feedback.seq", epoch)
        self._spool = Spool(Path(state_dir) / "spool", policy.spool_max_bytes)
        self._batch, self._flush_s = policy.batch, policy.flush_ms / 1000.0
        self._queue_max = policy.queue_max
        self._backoff = policy.backoff
        # Lock order: _spool_lock, then _cond. Neither is held across a network call.
        self._spool_lock = threading.Lock()
        self._cond = threading.Condition()
        self._queue: deque[bytes] = deque()
        self._inflight = 0
        #: ids of the lines in memory (queued or in flight): not yet in Redis or the spool
        self._held: set[int] = set()
        self._spill_gen = 0
        self._closed = False
        self._flush_requested = False
        self._down = False
        self._attempt = 0
        self._failures = 0
        self._next_attempt = 0.0
        self._spool_full_logged = False
        self._disk_error_logged = False
        self._thread = threading.Thread(target=self._run, name="edgeloop-uplink", daemon=True)
        self.sent = 0  # events XADDed, directly or from the spool
        self.resent = 0  # of which from the spool
        self.spooled = 0  # events written to the spool
        self.dropped = 0  # events lost because the spool was full
        self.refused = 0  # events the far end refused, kept in state_dir/refused
        self.last_error: str | None = None
        self.last_error_at = 0.0

    # -- the caller's side --------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def new_event_id(self) -> str:
        """The idempotency id for the next event: ``<device>:<epoch>:<seq>``."""
        return f"{self._id_prefix}{self._seq.next()}"

    def submit(self, event: FeedbackEvent, sample: bytes = b"") -> bool:
        """Hand ``event`` over with its sample's raw bytes (``x_shape`` and ``x_dtype``
        say how to read them; none when the event carries ``x``); True if it is
        queued for Redis, False if it went (or will go) to the spool because Redis
        is down or the queue is full."""
        return self.hand_over(event, sample)[0]

    def hand_over(self, event: FeedbackEvent, sample: bytes = b"") -> tuple[bool, bytes]:
        """``submit``, also returning the event's frame: ``kept(frame)`` says when it
        has left memory (in Redis or in the fsync'd spool)."""
        line = frame(event.to_wire(), sample)
        with self._cond:
            if not self._closed and len(self._queue) < self._queue_max:
                self._queue.append(line)
                self._held.add(id(line))
                if len(self._queue) in (1, self._batch):
                    self._cond.notify_all()
                return not self._down and self._spool.empty(), line
        if not self._spill(line):
            raise Unavailable(
                f"feedback cannot be kept: {self._queue_max} events wait in memory and the "
                f"spool in {self._spool.directory} cannot be written; retry later"
            )
        return False, line

    def kept(self, line: bytes) -> bool:
        """Whether the event of ``line`` (from ``hand_over``) is out of memory: in Redis,
        in the spool, or refused and kept in ``state_dir/refused``; a process killed now
        would not lose it."""
        with self._cond:
            return id(line) not in self._held

    def keep_now(self, line: bytes) -> bool:
        """Write ``line`` to the spool now if it is still only in memory (its send is
        stuck on a Redis that does not answer); False if the disk refused it. The event
        may then reach the stream twice, with one id: the trainer drops the second."""
        with self._spool_lock:
            if self.kept(line):
                return True
            if not self._write_spool([line]):
                return False
            self._unhold([line])
            return True

    def _unhold(self, lines: list[bytes]) -> None:
        with self._cond:
            self._held.difference_update(id(line) for line in lines)

    def _spill(self, line: bytes) -> bool:
        """Spool the queue and ``line`` after it; False if the disk refused them (the
        queue is kept, ``line`` is not)."""
        # Everything queued is older than ``line``: it goes first, so order holds.
        with self._spool_lock:
            with self._cond:
                queued = list(self._queue)
                self._queue.clear()
            if not self._write_spool([*queued, line]):
                self._requeue(queued)
                return False
            self._unhold(queued)
            with self._cond:
                self._spill_gen += 1
            return True

    def _requeue(self, lines: list[bytes]) -> None:
        """Put ``lines``, older than anything queued, back in front of the queue."""
        with self._cond:
            self._queue.extendleft(reversed(lines))

    @property
    def pending(self) -> int:
        """Events in memory, not yet sent or spooled."""
        return len(self._queue) + self._inflight

    @property
    def spool_bytes(self) -> int:
        return self._spool.size

    @property
    def connected(self) -> bool:
        return not self._down

    def flush(self, timeout: float = 5.0) -> bool:
        """Try to deliver everything queued and spooled now; True if all of it
        reached Redis within ``timeout``. Returns False early when Redis refuses
        the attempt. Undelivered events stay safe in the queue or the spool."""
        with self._cond:
            failures = self._failures
            self._flush_requested = True
            self._next_attempt = 0.0
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._idle() or self._failures > failures, timeout)
            self._flush_requested = False
            return self._idle()

    def close(self, timeout: float = 5.0) -> None:
        """Deliver what can be delivered within ``timeout``, spool the rest, stop."""
        if self._closed:
            return
        if self._thread.is_alive():
            self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self._spool_queued()  # the thread's leftovers, if it could not finish
        self._seq.close()
        self._sink.close()

    def _idle(self) -> bool:
        return not self._queue and not self._inflight and self._spool.empty()

    # -- the sender thread --------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                if not self._cycle():
                    return
            except Exception:  # the thread must outlive any one bad cycle
                logger.exception("feedback uplink: unexpected error; continuing")
                time.sleep(0.5)

    def _cycle(self) -> bool:
        if not self._wait_for_work():
            self._spool_queued()
            return False
        self._seq.reserve_ahead()
        batch, gen = self._take()
        if batch:
            self._send(batch, gen)
        elif not self._spool.empty() and time.monotonic() >= self._next_attempt:
            self._drain_spool()
        with self._cond:
            self._cond.notify_all()  # wake flush() waiters
        return True

    def _wait_for_work(self) -> bool:
        """Block until there is something to do; False once closed."""
        with self._cond:
            while not self._closed and not self._queue:
                if not self._spool.empty():
                    wait = self._next_attempt - time.monotonic()
                    if wait <= 0:
                        return True
                    self._cond.wait(min(wait, 1.0))
                else:
                    self._cond.wait(1.0)
            if self._closed:
                return False
            deadline = time.monotonic() + self._flush_s
            while len(self._queue) < self._batch and not self._flush_requested and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return True

    def _take(self) -> tuple[list[bytes], int]:
        """Take everything queued to send. While the spool is in use (or Redis is
        down) it goes behind the spool instead, and nothing is returned."""
        with self._spool_lock:
            with self._cond:
                lines = list(self._queue)
                self._queue.clear()
                # With Redis down the queue goes to the spool; but when the disk
                # refused it (the spool stays empty), Redis is tried again itself.
                retry = self._spool.empty() and time.monotonic() >= self._next_attempt
                if self._spool.empty() and (not self._down or retry):
                    self._inflight = len(lines)
                    return lines, self._spill_gen
            if lines:
                if self._write_spool(lines):
                    self._unhold(lines)
                else:
                    self._requeue(lines)
        return [], self._spill_gen

    def _send(self, batch: list[bytes], gen: int) -> None:
        try:
            refusals = self._sink.add(batch)
        except SinkDown as e:
            self._mark_down(e)
            with self._spool_lock:
                # newer events spilled meanwhile: the batch goes before them
                if self._write_spool(batch, front=self._spill_gen != gen):
                    self._unhold(batch)
                else:
                    self._requeue(batch)
        else:
            self.sent += len(batch) - self._keep_refused(refusals)
            self._unhold(batch)
            self._mark_up()
        finally:
            with self._cond:
                self._inflight = 0

    def _drain_spool(self) -> None:
        """Send the spool oldest segment first; stop at the first failure."""
        while True:
            with self._spool_lock:
                seg = self._spool.seal_head()
            if seg is None:
                self._mark_up()
                return
            try:
                lines = self._spool.read(seg)
            except OSError as e:
                logger.error("feedback spool segment %s is unreadable (%s); discarding it", seg, e)
                with self._spool_lock:
                    self._spool.remove(seg)
                continue
            try:
                refusals = self._sink.add(lines)
            except SinkDown as e:
                self._mark_down(e)
                return
            refused = self._keep_refused(refusals)
            with self._spool_lock:
                self._spool.remove(seg)
            self.sent += len(lines) - refused
            self.resent += len(lines) - refused
            logger.info("feedback uplink: sent %d spooled event(s)", len(lines))

    def _keep_refused(self, refusals: list[Refusal]) -> int:
        """Move refused events to ``state_dir/refused`` with the reason; how many."""
        total = 0
        for refusal in refusals:
            n = len(refusal.lines)
            total += n
            self.refused += n
            logger.error(
                "feedback uplink: %s refused %d event(s): %s", self._sink.name, n, refusal.reason
            )
            blob = b"".join(refusal.lines)
            try:
                self._refused_dir.mkdir(parents=True, exist_ok=True)
                held = sum(p.stat().st_size for p in self._refused_dir.iterdir())
                if held + len(blob) > self._spool.max_bytes:
                    raise OSError(f"{self._refused_dir} holds {held} bytes (spool_max_bytes)")
                name = f"{time.time_ns()}"
                append_durably(self._refused_dir / f"{name}.reason", refusal.reason.encode())
                append_durably(self._refused_dir / f"{name}.frames", blob)
            except OSError as e:
                self.dropped += n
                logger.error("feedback uplink: cannot keep refused events (%s); dropped", e)
        return total

    def _write_spool(self, lines: list[bytes], front: bool = False) -> bool:
        """Append (or prepend) to the spool, counting what did not fit in
        ``spool_max_bytes`` as dropped; False, with nothing written, if the disk refused
        the write (the caller keeps the lines). Caller holds _spool_lock."""
        try:
            written = self._spool.prepend(lines) if front else self._spool.append(lines)
        except OSError as e:  # disk full or failing: the lines stay in memory
            if not self._disk_error_logged:
                logger.error(
                    "feedback spool write failed (%s): keeping %d event(s) in memory "
                    "until the disk or Redis takes them",
                    e,
                    len(lines),
                )
                self._disk_error_logged = True
            return False
        if self._disk_error_logged:
            logger.info("feedback spool writable again")
            self._disk_error_logged = False
        self.spooled += written
        lost = len(lines) - written
        if lost:
            self.dropped += lost
            if not self._spool_full_logged:
                logger.error(
                    "feedback spool is full (%d bytes, spool_max_bytes %d): dropping events "
                    "until Redis is reachable again (%d so far)",
                    self._spool.size,
                    self._spool.max_bytes,
                    self.dropped,
                )
                self._spool_full_logged = True
        else:
            self._spool_full_logged = False
        return True

    def _spool_queued(self) -> None:
        with self._spool_lock:
            with self._cond:
                lines = list(self._queue)
                self._queue.clear()
            self._unhold(lines)
            if lines and not self._write_spool(lines):
                # the process is ending and its disk refuses them: nothing can keep them
                self.dropped += len(lines)
                logger.error(
                    "feedback spool cannot be written: %d event(s) lost at shutdown", len(lines)
                )

    def _mark_down(self, e: SinkDown) -> None:
        self.last_error, self.last_error_at = f"feedback uplink: {e}", time.time()
        if not self._down:
            logger.warning(
                "feedback uplink: %s unreachable (%s); spooling to %s",
                self._sink.name,
                e,
                self._spool.directory,
            )
        self._down = True
        self._failures += 1
        self._next_attempt = time.monotonic() + self._backoff.delay(self._attempt)
        self._attempt += 1

    def _mark_up(self) -> None:
        if self._down:
            logger.info("feedback uplink: %s reachable again", self._sink.name)
        self._down = False
        self._attempt = 0
