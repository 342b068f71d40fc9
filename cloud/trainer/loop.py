"""The trainer process: ingest feedback continuously, train rounds when triggered.

``Trainer.run(stop)`` is the loop; ``start()`` and ``step()`` are its parts, for
tests to drive one at a time:

- ``start()``: consumer group, lease, and — if no version of the model exists
  and this trainer holds the lease — the bootstrap, which publishes v1.
- ``step()``: one ingest poll (reclaim + read + accept), drift detection and
  round triggers, lease renewal, and the status report when due.

Rounds run in a worker thread (one at a time) so that ingest never stops while
a round trains, exports and is judged; with ``background_rounds=False`` a
round runs inside ``step()``, which tests use for determinism. Only the
holder of the model's lease runs rounds and writes the status; any number of
trainers may ingest. The state that matters (data, watermarks, versions,
weights) is in Redis; the drift detector and trigger counters are rebuilt from
new feedback after a restart.
"""

from __future__ import annotations

import errno
import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import redis

from cloud.data.datasets import Dataset, load_dataset, split
from cloud.data.ingest import Accepted, Batch, FeedbackIngest, stream_id_key
from cloud.data.quarantine import Quarantine
from cloud.data.replay import TrainerData
from cloud.learning.weights import WeightsError, load_weights
from cloud.learning.zoo import model_spec
from cloud.registry.locations import PROD_BLOB_DIR
from cloud.registry.publisher import Publisher
from cloud.registry.tuf_repo import tuf_repository
from cloud.registry.versions import DirBlobStore, Registry
from cloud.trainer.label_check import LabelCheck
from cloud.trainer.lease import Lease
from cloud.trainer.rounds import RoundReport, RoundRunner
from cloud.trainer.settings import TrainerSettings
from cloud.trainer.triggers import DriftDetector, RoundTrigger
from shared.errors import ConfigError, MessageError
from shared.keys import FleetKeys
from shared.messages import TrainerStatus, VersionSummary
from shared.replies import REDIS_DOWN
from shared.retry import Backoff
from shared.signing import Signer
from shared.task import TaskSpec

logger = logging.getLogger(__name__)

#: Disk errors a round can fail on without a bug: the blob directory full or failing.
_DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS)

#: Versions listed in the status report.
STATUS_VERSIONS = 20


class Trainer:
    """One trainer process for one model of one fleet."""

    def __init__(
        self,
        settings: TrainerSettings,
        *,
        client: redis.Redis | None = None,
        dataset: Dataset | None = None,
        background_rounds: bool = True,
    ) -> None:
        signing_key = settings.signing_key
        if signing_key is None:  # pragma: no cover - settings guarantee it
            raise ConfigError("no signing key configured")
        self.settings = s = settings
        self.keys = FleetKeys(s.fleet)
        self.client = client or s.redis_client()
        self.dataset = dataset or load_dataset(s.dataset, s.label_column, s.task)
        self.parts = split(self.dataset, s.seed, whole=s.seed_split == "whole")
        self.spec = model_spec(s.model, self.dataset)
        self.data = TrainerData(self.client, self.keys, s.data_options(self.dataset))
        self.ingest = FeedbackIngest(self.client, self.keys, self.data, s.ingest_options())
        blobs = DirBlobStore(s.blob_dir or PROD_BLOB_DIR)  # the settings fill blob_dir in
        self.registry = Registry(self.client, self.keys, blobs, patch_ttl_s=s.patch_ttl_s)
        self.publisher = Publisher(
            self.registry,
            Signer.from_file(signing_key),
            max_patches=s.max_patches,
            release=s.release or "manual",  # the settings fill it in by mode
            tuf=tuf_repository(self.client, self.keys, s.tuf_targets_key, s.tuf_online_key),
            deltas_maxlen=s.deltas_maxlen,
            wait_replicas=s.publish_wait_replicas,
            wait_ms=s.publish_wait_ms,
        )
        self.quarantine = Quarantine(self.client, self.keys, s.model_name)
        self.label_check = LabelCheck(
            self.publisher, self.data, s.model_name, s.quarantine_error_factor
        )
        self.rounds = RoundRunner(s, self.client, self.publisher, self.data, self.parts, self.spec)
        self.rounds.fresh_model()  # the model contract's checks, before anything starts
        self.lease = Lease(
            self.client, self.keys.trainer_lock(s.model_name), s.consumer, s.lock_ttl_ms
        )
        self.drift = self._drift_detector()
        self.trigger = self._round_trigger()
        self.status = TrainerStatus(model=s.model_name, consumer=s.consumer)
        self._executor = (
            ThreadPoolExecutor(1, thread_name_prefix="round") if background_rounds else None
        )
        self._round: Future[RoundReport] | None = None
        self._window = _Window(self.dataset.task)
        self._drift_signal: dict[str, float | str] | None = None
        self._next_status = 0.0
        self._next_lease = 0.0
        self._status_restored = False
        self._summaries: dict[str, VersionSummary] = {}  # versions are immutable

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Consumer group, lease, bootstrap if the model has no version yet."""
        self.ingest.ensure_group()
        self._check_published_model()
        self._refresh_lease(force=True)
        if self.lease.held and self.publisher.latest(self.settings.model_name) is None:
            logger.info("no version of %s yet: bootstrapping", self.settings.model_name)
            with self.lease.kept():  # a bootstrap outlasts the lease: a standby must wait
                self._finish(self.rounds.bootstrap())

    def _check_published_model(self) -> None:
        """Refuse to train a published model on a dataset with another input or task, or
        with a model its stored weights do not fit."""
        name = self.settings.model_name
        latest = self.publisher.latest(name)
        if latest is None:
            return
        m = latest[2].manifest()
        ds = self.dataset
        if m.input_spec != ds.input or m.task_spec != ds.task:
            raise ConfigError(
                f"{name} v{m.version} takes {m.input_spec.describe()} samples for "
                f"{_describe(m.task_spec)}, but dataset {self.settings.dataset!r} has "
                f"{ds.input.describe()} samples and {_describe(ds.task)}; use another model name "
                "for another dataset"
            )
        blob = self.client.get(self.keys.weights(m.sha256))
        if isinstance(blob, bytes):
            try:
                load_weights(self.rounds.fresh_model().net, blob)
            except WeightsError as e:
                raise ConfigError(
                    f"{name} v{m.version} was trained as another model than {self.spec!r} ({e}); "
                    "use another model name for another model"
                ) from e

    def run(self, stop: threading.Event) -> None:
        """Ingest and train until ``stop`` is set; rides out Redis outages, and commands a
        Redis refuses (a cluster down or mid-failover, too few replicas to write, a disk
        that stops writes, a user without a permission): one warning line each time, and
        the work is tried again until the refusal is gone."""
        backoff = Backoff(base=0.2, cap=5.0, on_backoff=_starting_again)
        backoff.call(self.start, retry_on=(*REDIS_DOWN, redis.ResponseError), stop=stop)
        failures = 0
        while not stop.is_set():
            try:
                self.step()
                failures = 0
            except (*REDIS_DOWN, redis.ResponseError) as e:
                failures += 1
                wait = backoff.delay(min(failures, 6))
                logger.warning("%s; retrying in %.1fs", _redis_trouble(e), wait)
                stop.wait(wait)
        self.close()

    def close(self) -> None:
        """Wait for a running round, write a last status, release the lease."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._collect()
        try:
            if self.lease.held:
                self.write_status()
            self.lease.release()
        except REDIS_DOWN as e:
            logger.warning("could not write the last status or release the lease: %s", e)

    # -- one step -------------------------------------------------------------

    def step(self, block_ms: int | None = None) -> Batch:
        """One ingest poll, then triggers, lease and status."""
        batch = self.ingest.poll(block_ms)
        if len(batch.accepted) and self.settings.quarantine:
            self._check_labels(batch.accepted)
        if len(batch.accepted):
            drift = self.drift.update(batch.accepted.served)
            if drift:
                self.data.mark_drift()  # cloud/data/concept.py: one young drift, one mark
            if drift and self._drift_signal is None:  # the signal that starts the round
                self._drift_signal = self.drift.last_signal
            self.trigger.observe(len(batch.accepted), drift)
            self._window.add(batch)
        self._collect()
        self._refresh_lease()
        if self.lease.held:
            self._maybe_start_round()
            if time.monotonic() >= self._next_status:
                self.write_status()
        return batch

    def _check_labels(self, accepted: Accepted) -> None:
        """Count the batch's labels against the model per device; the lease holder then
        quarantines the devices whose counts are beyond chance (cloud/data/quarantine.py)."""
        checks = self.label_check.check(accepted)
        if not checks:
            return
        self.quarantine.count(checks)
        if self.lease.held:
            s = self.settings
            self.quarantine.judge(s.quarantine_margin, s.quarantine_delta, s.quarantine_min_samples)

    def _maybe_start_round(self) -> None:
        if self._round is not None:
            return
        trigger = self.trigger.due()
        if trigger is None or self.data.recent_count() < self.settings.gate_min_recent:
            return
        if self.publisher.latest(self.settings.model_name) is None:
            with self.lease.kept():
                self._finish(self.rounds.bootstrap())
            return
        new = self.trigger.started()
        window = {**self._window.take(new), "signal": self._trigger_signal(trigger)}
        round_no = self.status.rounds + self.status.rounds_rejected + 1
        logger.info("round %d starts (trigger %s, %d new samples)", round_no, trigger, new)
        if self._executor is None:
            self._finish(self.rounds.run(round_no, trigger, window, self._may_publish))
        else:
            self._round = self._executor.submit(
                self.rounds.run, round_no, trigger, window, self._may_publish
            )

    def _may_publish(self) -> bool:
        """True when this trainer holds the lease, taking it again if it ran out while
        nobody else took it: a round run in the step's own thread (no background rounds)
        cannot renew it while it trains, and one slower than the TTL would otherwise be
        thrown away. Safe because the publisher refuses a child whose parent is no
        longer the latest (StaleParent), whoever held the lease in between."""
        return self.lease.held or self.lease.refresh()

    def _trigger_signal(self, trigger: str) -> dict[str, Any]:
        """The numbers that made ``trigger`` fire, for the version's explanation."""
        s = self.settings
        if trigger == "drift":
            signal, self._drift_signal = self._drift_signal or {}, None
            return dict(signal)
        if trigger == "timer":
            return {"interval_s": s.round_interval_s, "threshold": s.round_interval_min_samples}
        if trigger == "concept":
            return {"threshold": s.concept_round_samples}
        return {"threshold": s.round_min_samples}

    def _collect(self) -> None:
        """Pick up a finished background round."""
        if self._round is None or not self._round.done():
            return
        future, self._round = self._round, None
        try:
            self._finish(future.result())
        except (*REDIS_DOWN, OSError) as e:
            # an outage (Redis, a full or failing blob disk), not a bug: one line, and a
            # later round starts anew from what Redis holds
            if isinstance(e, OSError) and e.errno not in _DISK_ERRORS:
                logger.exception("round failed")
            else:
                logger.warning("round failed (%s: %s); a later round retries", type(e).__name__, e)
            self.status.last_round = {"error": f"{type(e).__name__}: {e}", "ts": time.time()}
            self.status.rounds_rejected += 1
        except Exception as e:  # a failed round must not end ingest; it is reported
            logger.exception("round failed")
            self.status.last_round = {"error": f"{type(e).__name__}: {e}", "ts": time.time()}
            self.status.rounds_rejected += 1

    def _finish(self, report: RoundReport) -> None:
        self._restore_status()
        if report.trigger != "bootstrap":
            if report.published:
                self.status.rounds += 1
            else:
                self.status.rounds_rejected += 1
        self.status.last_round = {**report.as_dict(), "ts": time.time()}
        if report.published:
            self.drift = self._drift_detector()
            logger.info("published v%s (%s): %s", report.version, report.trigger, report.reason)
        else:
            logger.info("round %d rejected: %s", report.round, report.reason)
        self.write_status()

    def _round_trigger(self) -> RoundTrigger:
        """Counts, timer and drift; after a drift, the young concept's pace:
        the drift round once the samples since it can say what the world is (concept_min
        _samples for training, concept_min_recent held out), then a round every
        concept_round_samples while it is young (fewer held out since it than the recent
        window holds; cloud/data/replay.py's mark)."""
        s = self.settings
        if not s.drop_contradicted:
            return RoundTrigger(
                s.round_min_samples, s.round_interval_s, s.round_interval_min_samples
            )
        k = s.holdout_every
        return RoundTrigger(
            s.round_min_samples,
            s.round_interval_s,
            s.round_interval_min_samples,
            # a quarter more than the expected share of training samples: the holdout
            # draw varies, and a drift round without its concept learns nothing
            concept_samples=max(
                -(-5 * s.concept_min_samples * k // (4 * (k - 1))), s.concept_min_recent * k
            ),
            young_samples=s.concept_round_samples,
            young_span=s.recent_window * k,
        )

    def _drift_detector(self) -> DriftDetector:
        s = self.settings
        return DriftDetector(
            s.drift_window,
            s.drift_drop,
            s.drift_level_alpha,
            self.dataset.task,
            s.drift_rise,
            noise_z=s.drift_noise_z,
        )

    # -- lease and status -----------------------------------------------------

    def _refresh_lease(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now >= self._next_lease:
            was = self.lease.held
            self.lease.refresh()
            self._next_lease = now + self.settings.lock_ttl_ms / 3000.0
            if self.lease.held and not was:
                self._restore_status()

    def _restore_status(self) -> None:
        """Round counters from the previous holder's report, once per lease."""
        if self._status_restored:
            return
        self._status_restored = True
        raw = self.client.get(self.keys.trainer(self.settings.model_name))
        if raw is None:
            return
        try:
            old = TrainerStatus.from_wire(raw)
        except MessageError as e:
            logger.warning("ignoring an unreadable trainer status: %s", e)
            return
        self.status.rounds, self.status.rounds_rejected = old.rounds, old.rounds_rejected
        self.status.last_round = old.last_round

    def write_status(self) -> TrainerStatus:
        """Write the TrainerStatus (counters from Redis, versions from their manifests)."""
        stats = self.data.stats()
        st = self.status
        st.feedback_accepted = stats["accepted"]
        st.feedback_duplicates = stats["duplicates"]
        st.feedback_deadlettered = stats["deadlettered"]
        st.pending_samples = self.trigger.pending
        st.published = self._version_summaries()
        st.ts = time.time()
        self.client.set(self.keys.trainer(self.settings.model_name), st.to_wire())
        self._next_status = time.monotonic() + self.settings.status_interval_s
        return st

    def _version_summaries(self) -> list[VersionSummary]:
        out = []
        for version, sha in self.publisher.versions(self.settings.model_name)[-STATUS_VERSIONS:]:
            if sha in self._summaries:
                out.append(self._summaries[sha])
                continue
            # the registry's record, not the manifest: an old version's manifest may have
            # been moved to the blob store (cloud/registry/collect.py)
            r = self.registry.get(self.settings.model_name, sha)
            out.append(
                VersionSummary(
                    version=version,
                    sha256=sha,
                    trigger=r.trigger,
                    metrics=r.metrics,
                    published_at=r.created_at,
                )
            )
            self._summaries[sha] = out[-1]
        return out


class _Window:
    """The new data since the last round: stream id range and labels per class."""

    def __init__(self, task: TaskSpec) -> None:
        self.task = task
        self.labels = task.labels
        self._reset()

    def _reset(self) -> None:
        self.first: str | None = None
        self.last: str | None = None
        self.counts = np.zeros(len(self.labels), np.int64)

    def add(self, batch: Batch) -> None:
        a = batch.accepted
        if a.first_id and (
            self.first is None or stream_id_key(a.first_id) < stream_id_key(self.first)
        ):
            self.first = a.first_id
        if a.last_id and (self.last is None or stream_id_key(a.last_id) > stream_id_key(self.last)):
            self.last = a.last_id
        if self.task.is_classification:
            self.counts += np.bincount(a.y, minlength=len(self.labels))

    def take(self, new_samples: int) -> dict[str, Any]:
        out: dict[str, Any] = {"stream_ids": [self.first, self.last], "new_samples": new_samples}
        if self.task.is_classification:
            out["labeled_per_class"] = {self.labels[c]: int(n) for c, n in enumerate(self.counts)}
        self._reset()
        return out


def _describe(task: TaskSpec) -> str:
    if task.is_classification:
        return f"classes {task.labels}"
    return f"outputs {task.outputs}"


def _redis_trouble(e: BaseException) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, redis.ResponseError):
        return f"redis refused a command ({first})"
    return f"redis unavailable ({first})"


def _starting_again(attempt: int, wait: float, e: BaseException) -> None:
    logger.warning("could not start: %s; trying again in %.1fs", _redis_trouble(e), wait)
