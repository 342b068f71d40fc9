"""``edgeloop replay``'s run: a stream's rows in order through a private fleet.

Everything is the demo's (``cloud.demo.fleet.LocalFleet``): a redis-server, the
trainer and the edge daemons as separate processes. The trainer's dataset is the
stream's first ``seed_rows`` rows (written to an ``.npz`` in the work dir, taken
whole and in order: ``seed_split = "whole"``), so version 1 is the bootstrap on
them. Then one driver thread plays the sensors: row after row, at ``rate`` rows a
second in total, it asks the next edge (round-robin) for a prediction over HTTP,
and sends the label of the row ``label_delay`` rows back to the edge that
answered it, by request id (``cloud.replay.plan``). Nothing else is sent: the
edges, the uplink, the trainer's rounds, the signed versions and the hot swaps do
what they do in production.

Afterwards: the first concept's rows are asked again with no label (forgetting),
the feedback is drained, and the figures are read back from what the code
records — the feedback stream's entry ids, each version's training window (the
last stream entry it learned from), the edges' counters and the trainer's status.
River's baselines then run on the same plan (``cloud.replay.baselines``); their
time is reported apart.
"""

from __future__ import annotations

import bisect
import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import numpy as np
import numpy.typing as npt
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from cloud.data.datasets import load_dataset
from cloud.data.ingest import stream_id_key
from cloud.demo.fleet import LocalFleet
from cloud.demo.runner import DEMO_GUARD
from cloud.demo.workload import Workload, check_model
from cloud.registry.versions import DirBlobStore, Registry
from cloud.replay.baselines import require_river, run_baselines
from cloud.replay.figures import percentile, summary
from cloud.replay.plan import QUICK_ROWS, Plan, ReplayOptions, default_seed_rows
from cloud.replay.streams import Stream, load_stream
from cloud.trainer.settings import TrainerSettings
from shared.feedback_stream import events_of, frames_field, frames_of
from shared.messages import TrainerStatus

logger = logging.getLogger(__name__)

#: First-concept rows asked again at the end (forgetting), at most.
FORGETTING_ROWS = 500
#: Seed rows of a ``--quick`` replay.
QUICK_SEED_ROWS = 200


@dataclass
class Served:
    """What the edges answered, per streamed row, and the labels sent for them."""

    rows: int
    correct: npt.NDArray[np.bool_] = field(init=False)
    version: npt.NDArray[np.int64] = field(init=False)
    answered_at: npt.NDArray[np.float64] = field(init=False)
    fallback: npt.NDArray[np.bool_] = field(init=False)
    adapted: npt.NDArray[np.bool_] = field(init=False)  # the edge's adapter answered
    predicted: npt.NDArray[np.int64] = field(init=False)
    request_ids: list[str | None] = field(init=False)
    label_sent_at: dict[int, float] = field(default_factory=dict)  # streamed row -> time
    label_sent_after: dict[int, int] = field(default_factory=dict)  # streamed row -> row then
    label_event_id: dict[int, str] = field(default_factory=dict)  # streamed row -> its event
    failed: int = 0
    feedback_sent: int = 0
    feedback_failed: int = 0
    rows_behind: int = 0
    feedback_pending: int = 0

    def __post_init__(self) -> None:
        n = self.rows
        self.correct = np.zeros(n, bool)
        self.version = np.full(n, -1, np.int64)
        self.answered_at = np.zeros(n, np.float64)
        self.fallback = np.zeros(n, bool)
        self.adapted = np.zeros(n, bool)
        self.predicted = np.zeros(n, np.int64)  # predictions asked per row (each once)
        self.request_ids = [None] * n


def prepare_stream(options: ReplayOptions) -> tuple[Stream, Plan]:
    """The stream and its plan, checked (``InputError``/``DatasetError``: exit 2)."""
    options.check()
    require_river()
    stream = load_stream(
        options.dataset, options.label_column, seed=options.seed, quick=options.quick
    )
    if options.quick and len(stream) > QUICK_ROWS:
        stream = Stream(
            stream.name,
            stream.X[:QUICK_ROWS],
            stream.y[:QUICK_ROWS],
            stream.labels,
            [d for d in stream.drifts if d < QUICK_ROWS],
        )
    seed_rows = options.seed_rows or (
        QUICK_SEED_ROWS if options.quick else default_seed_rows(len(stream))
    )
    plan = Plan.of(
        rows=len(stream),
        seed_rows=seed_rows,
        label_share=options.label_share,
        label_delay=options.label_delay,
        seed=options.seed,
    )
    return stream, plan


def seed_workload(stream: Stream, plan: Plan, workdir: Path, seed: int) -> Workload:
    """The trainer's dataset (the seed rows as an ``.npz``) and its checked model."""
    from cloud.learning.zoo import default_model

    path = workdir / "seed.npz"
    m = plan.seed_rows
    np.savez(path, X=stream.X[:m], y=stream.y[:m], labels=np.array(stream.labels))
    spec = f"npz:{path}"
    dataset = load_dataset(spec, None, "classification")
    model = default_model(dataset)
    check_model(model, dataset, seed)
    name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in f"replay-{stream.name}")
    return Workload(
        name=name[:64],
        model=model,
        dataset_spec=spec,
        dataset=dataset,
        label_column=None,
        task="classification",
        drift_name="",
    )


def round_samples(labels: int, quick: bool = False) -> int:
    """New labels that start a round: 200 (100 quick), fewer for a short stream, so
    that its labels make about ten rounds (at least 50 labels each).

    >>> round_samples(5722), round_samples(525), round_samples(100, quick=True)
    (200, 52, 50)
    """
    return max(50, min(100 if quick else 200, labels // 10))


#: The trainer's default: every 5th label is held out.
HOLDOUT_EVERY: int = TrainerSettings.model_fields["holdout_every"].default


def gate_samples(round_labels: int) -> int:
    """Held-out labels the first round waits for: the trainer's 30, fewer for a short
    stream — what one round's labels hold out (every 5th), at least 10 — so that its
    first round comes after one round's labels, not three.

    >>> gate_samples(200), gate_samples(79), gate_samples(50)
    (30, 15, 10)
    """
    return min(30, max(10, round_labels // HOLDOUT_EVERY))


#: The weight decays the replay's trainer chooses from (TrainerSettings.weight_decay_choices).
WEIGHT_DECAY_CHOICES = [0.0, 0.01, 0.03, 0.1]

#: The replay's trainer retrains a quiet round from a fresh model up to this many
#: training samples (TrainerSettings.retrain_max_samples).
RETRAIN_MAX_SAMPLES = 1000


class Replay(LocalFleet):
    """One replay; ``run()`` streams, ``result()`` reads the figures back."""

    edge_overrides = DEMO_GUARD

    def __init__(self, options: ReplayOptions, console: Console) -> None:
        self.options = options
        # bad input stops here, before the work dir or any process exists
        self.stream, self.plan = prepare_stream(options)
        workdir = Path(tempfile.mkdtemp(prefix="edgeloop-replay-"))
        try:
            workload = seed_workload(self.stream, self.plan, workdir, options.seed)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        super().__init__(workdir, workload, console, edges=options.edges, seed=options.seed)
        self.keep = options.keep
        self.served = Served(self.plan.streamed)
        self.stream_s = 0.0
        self.forgetting_rows: npt.NDArray[np.intp] = np.zeros(0, np.intp)
        self.forgetting_accuracy: float | None = None

    def trainer_settings(self) -> dict[str, Any]:
        quick = self.options.quick
        return {
            "seed_split": "whole",
            "round_min_samples": round_samples(self.plan.labels_sent, quick),
            "gate_min_recent": gate_samples(round_samples(self.plan.labels_sent, quick)),
            "round_interval_s": 10.0 if quick else 20.0,
            "drift_window": 40,
            # a noisy stream's windows wobble past drift_drop by chance: a drift must be
            # beyond that too (ARCHITECTURE.md, "Rounds, triggers and the lease")
            "drift_noise_z": 4.0,
            # a tabular MLP's quiet rounds learn more per round from more passes at a
            # higher rate (ARCHITECTURE.md, "Learning fast enough")
            "epochs": 20,
            "lr": 3e-3,
            # how hard to hold the weights back is the data's: a 200-row CSV is learnt by
            # heart without it, a curved border needs every unit (ARCHITECTURE.md,
            # "Learning fast enough")
            "weight_decay_choices": WEIGHT_DECAY_CHOICES,
            # a small training set is learnt better afresh than by fine-tuning the parent
            # (ARCHITECTURE.md, "Rounds on small stationary streams")
            "retrain_max_samples": RETRAIN_MAX_SAMPLES,
            # a child that ties its parent on the recent window (and keeps the earlier
            # data) is published: on the replay's small held-out windows a gain of a
            # point is 1-3 samples, and waiting for it kept Phishing's bootstrap serving
            # the whole stream (ARCHITECTURE.md, "Rounds on small stationary streams")
            "min_gain": 0.0,
            # the edges' adapters start from every seed row (ARCHITECTURE.md, "Exemplars")
            "exemplars": 1000,
            # the books join each label to its feedback entry (time to serve): the
            # stream is kept whole for the run, not trimmed as entries are accepted
            "feedback_trim_interval_s": -1.0,
        }

    # -- streaming ---------------------------------------------------------------

    def run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=10.0) for url in self.edge_urls.values()]
        try:
            self._stream_rows(clients)
            self._ask_first_concept(clients)
        finally:
            for c in clients:
                c.close()
        self.wait_drained(self.served.feedback_sent)

    def _stream_rows(self, clients: list[httpx.Client]) -> None:
        plan, X, served, rate = self.plan, self.stream.X, self.served, self.options.rate
        columns = (
            TextColumn("[bold]replay[/] {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
        )
        started = time.monotonic()
        next_check = started
        with Progress(*columns, console=self.console, transient=True) as progress:
            task = progress.add_task("", total=plan.streamed)
            for s in range(plan.streamed):
                if rate > 0:
                    due = started + s / rate
                    now = time.monotonic()
                    if due > now:
                        time.sleep(due - now)
                    else:
                        served.rows_behind = max(served.rows_behind, int((now - due) * rate))
                i = plan.seed_rows + s
                self._predict(clients[s % len(clients)], s, X[i])
                j = plan.label_sent_after(i)
                if j is not None:
                    r = j - plan.seed_rows
                    self._send_label(clients[r % len(clients)], r, j)
                    served.label_sent_after[r] = s
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + 1.0
                    self._check_children()
                    self._watch_backlog()
                    acc = served.correct[: s + 1].mean()
                    progress.update(
                        task,
                        completed=s + 1,
                        description=f"v{served.version[s]} accuracy {acc:.3f}",
                    )
        self.stream_s = time.monotonic() - started

    def _predict(self, client: httpx.Client, s: int, x: npt.NDArray[np.float32]) -> None:
        served = self.served
        served.predicted[s] += 1
        try:
            r = client.post("/v1/predict", json={"x": x.tolist()})
            r.raise_for_status()
            answer = r.json()
        except (httpx.HTTPError, ValueError):
            served.failed += 1
            return
        served.answered_at[s] = time.time()
        served.request_ids[s] = answer.get("request_id")
        served.version[s] = answer.get("model_version") or -1
        served.fallback[s] = bool(answer.get("fallback"))
        served.adapted[s] = bool(answer.get("adapted"))
        label = answer.get("label")
        served.correct[s] = label is not None and int(label) == int(
            self.stream.y[self.plan.seed_rows + s]
        )

    def close(self) -> None:
        if self.keep:
            self._keep_rows()
        super().close()

    def _keep_rows(self) -> None:
        """What each streamed row got, kept with the logs (``rows.npz``) to study a run
        offline: the version that answered (-1: none), when, whether it was right, a
        fallback's or the adapter's answer, the streamed row after which each row's
        label was sent (-1: never) and its feedback event's id, and the stream's spec."""
        served = self.served
        sent_after = np.full(served.rows, -1, np.int64)
        for r, s in served.label_sent_after.items():
            sent_after[r] = s
        event_ids = np.array([served.label_event_id.get(r, "") for r in range(served.rows)])
        np.savez(
            self.workdir / "rows.npz",
            version=served.version,
            answered_at=served.answered_at,
            correct=served.correct,
            fallback=served.fallback,
            adapted=served.adapted,
            label_sent_after=sent_after,
            label_event_id=event_ids,
            seed_rows=self.plan.seed_rows,
            dataset=self.options.dataset,
            label_column=self.options.label_column or "",
            quick=self.options.quick,
            seed=self.options.seed,
        )

    def _send_label(self, client: httpx.Client, r: int, j: int) -> None:
        """The label of file row ``j`` (streamed row ``r``), by its request id; by its
        input when the prediction failed or the edge no longer holds it."""
        served, label = self.served, int(self.stream.y[j])
        rid = served.request_ids[r]
        body: dict[str, Any] = {"request_id": rid, "label": label}
        if rid is None:
            body = {"x": self.stream.X[j].tolist(), "label": label}
        try:
            resp = client.post("/v1/feedback", json=body)
            if resp.status_code == 404 and rid is not None:
                served.request_ids[r] = None
                resp = client.post(
                    "/v1/feedback", json={"x": self.stream.X[j].tolist(), "label": label}
                )
            resp.raise_for_status()
        except httpx.HTTPError:
            served.feedback_failed += 1
            return
        served.feedback_sent += 1
        served.label_sent_at[r] = time.time()
        served.label_event_id[r] = str(resp.json().get("event_id", ""))

    def _watch_backlog(self) -> None:
        status = self.trainer_status()
        if status is not None:
            taken = status.feedback_accepted + status.feedback_deadlettered
            pending = self.served.feedback_sent - taken
            self.served.feedback_pending = max(self.served.feedback_pending, pending)

    def _ask_first_concept(self, clients: list[httpx.Client]) -> None:
        """Forgetting: ask for rows of the first concept again, without labels."""
        drifts = self.stream.drifts
        if not drifts or drifts[0] <= self.plan.seed_rows:
            return
        first, end = self.plan.seed_rows, drifts[0]
        rows = np.unique(
            np.linspace(first, end - 1, min(FORGETTING_ROWS, end - first)).astype(np.intp)
        )
        right = 0
        for n, i in enumerate(rows):
            try:
                r = clients[n % len(clients)].post(
                    "/v1/predict", json={"x": self.stream.X[i].tolist()}
                )
                r.raise_for_status()
                label = r.json().get("label")
            except (httpx.HTTPError, ValueError):
                self.served.failed += 1
                continue
            right += int(label is not None and int(label) == int(self.stream.y[i]))
        self.forgetting_rows = rows
        self.forgetting_accuracy = right / len(rows)

    # -- figures -----------------------------------------------------------------

    def covered_through(self) -> dict[int, tuple[int, int] | None]:
        """Per published version, the last feedback stream entry it (or an ancestor)
        trained on, as the round recorded it in the version's explanation."""
        assert self.redis is not None
        registry = Registry(self.redis, self.keys, DirBlobStore(self.workdir / "blobs"))
        out: dict[int, tuple[int, int] | None] = {}
        last: tuple[int, int] | None = None
        for v in sorted(self.published_versions()):
            window = registry.manifest(self.model, v).explanation.data_window
            ids = window.get("stream_ids") or [None]
            if ids[-1]:
                key = stream_id_key(str(ids[-1]))
                last = key if last is None else max(last, key)
            out[v] = last
        return out

    def entries_by_request(self) -> dict[str, tuple[int, int]]:
        """Request id -> the feedback stream entry that carried its label."""
        assert self.redis is not None
        out: dict[str, tuple[int, int]] = {}
        entries = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            self.redis.xrange(self.keys.feedback_of(self.model)),
        )
        for entry_id, fields in entries:
            blob = frames_field(fields)
            events = [e for e, _ in frames_of(blob)] if blob is not None else events_of(fields)
            for raw in events or []:
                try:
                    rid = json.loads(raw).get("request_id")
                except ValueError:
                    continue
                if rid:
                    out[rid] = stream_id_key(entry_id.decode())
        return out

    def time_to_serve(self) -> tuple[list[float], int]:
        """Per label sent: seconds from its arrival to the first answer by a version
        trained on it; and how many labels no served answer had learnt from yet."""
        served = self.served
        covered = self.covered_through()
        entries = self.entries_by_request()
        order = [v for v in sorted(covered) if covered[v] is not None]
        answered = np.nonzero(served.version > 0)[0]
        by_version = {v: answered[served.version[answered] >= v] for v in order}
        times: list[float] = []
        unserved = 0
        for r, sent_at in served.label_sent_at.items():
            rid = served.request_ids[r]
            entry = entries.get(rid) if rid else None
            first = next((v for v in order if entry and covered[v] >= entry), None)  # type: ignore[operator]
            if first is None:
                unserved += 1
                continue
            rows = by_version[first]
            at = bisect.bisect_left(served.answered_at[rows].tolist(), sent_at)
            if at == len(rows):
                unserved += 1
                continue
            times.append(float(served.answered_at[rows[at]] - sent_at))
        return times, unserved

    def result(self) -> dict[str, Any]:
        plan, served, stream = self.plan, self.served, self.stream
        trainer = self.trainer_status(fresh=True) or TrainerStatus(model=self.model, consumer="")
        counters = [s.counters for s in self.edge_health().values() if s is not None]
        sends = plan.sends()
        drifts = [d - plan.seed_rows for d in stream.drifts]
        figures = summary(
            served.correct, drifts=drifts, sends=sends, times=_monotone(served.answered_at)
        )
        tts, unserved = self.time_to_serve()
        settled = trainer.feedback_accepted + trainer.feedback_deadlettered
        result: dict[str, Any] = {
            "dataset": self.options.dataset,
            "stream": stream.name,
            "model": self.model,
            "rows": len(stream),
            "seed_rows": plan.seed_rows,
            "streamed_rows": plan.streamed,
            "drift_rows": stream.drifts,
            "edges": self.edges,
            "rate": self.options.rate or "as fast as the loop takes them",
            "achieved_rate": round(plan.streamed / self.stream_s, 1) if self.stream_s else None,
            "stream_s": round(self.stream_s, 1),
            "label_share": self.options.label_share,
            "label_delay": plan.label_delay,
            **figures,
            "fallback_answers": int(served.fallback.sum()),
            "adapted_answers": int(served.adapted.sum()),
            "adapted_accuracy": (
                round(float(served.correct[served.adapted].mean()), 4)
                if served.adapted.any()
                else None
            ),
            "adapter_switches": sum(c.adapter_switches for c in counters),
            "time_to_serve_p50": percentile(tts, 50),
            "time_to_serve_p95": percentile(tts, 95),
            "labels_not_served_yet": unserved,
            "forgetting": self._forgetting(figures),
            "rounds": trainer.rounds + trainer.rounds_rejected,
            "rounds_rejected": trainer.rounds_rejected,
            "versions_published": len(self.published_versions()),
            "bytes_downloaded": sum(c.bytes_downloaded for c in counters),
            "predictions": int(served.predicted.sum()),
            "rows_predicted_once": bool(np.all(served.predicted == 1)),
            "labels_planned": plan.labels_sent,
            # the rows whose labels were sent are the plan's, each sent label_delay rows on
            "labels_as_planned": sorted(served.label_sent_after) == plan.labeled_rows(),
            "label_delays": sorted({a - r for r, a in served.label_sent_after.items()}),
            "labels_sent": served.feedback_sent,
            "feedback_trained": trainer.feedback_accepted,
            "feedback_deadlettered": trainer.feedback_deadlettered,
            "feedback_lost": max(0, served.feedback_sent - settled),
            "failed_requests": served.failed
            + served.feedback_failed
            + sum(c.failed_requests for c in counters),
            "largest_backlog": {
                "rows_behind_schedule": served.rows_behind,
                "feedback_pending": served.feedback_pending,
            },
        }
        return result

    def _forgetting(self, figures: dict[str, Any]) -> dict[str, Any] | None:
        if self.forgetting_accuracy is None or not figures["drifts"]:
            return None
        before = figures["drifts"][0]["accuracy_before"]
        # the same rows as they were served while streaming, before the drift: the window
        # before the drift is a few hundred other rows, and on a noisy stream it can sit
        # several points from the first concept's accuracy over all of its rows
        then = round(
            float(self.served.correct[self.forgetting_rows - self.plan.seed_rows].mean()), 4
        )
        end = round(self.forgetting_accuracy, 4)
        return {
            "rows": len(self.forgetting_rows),
            "accuracy_before_drift": before,
            "accuracy_at_end": end,
            "drop": None if before is None else round(before - self.forgetting_accuracy, 4),
            "rows_accuracy_when_served": then,
            "drop_on_the_rows": round(then - end, 4),
        }


def _monotone(times: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Answer times with a failed row's (0) filled from the row before it."""
    out = times.copy()
    for s in range(1, len(out)):
        if out[s] == 0:
            out[s] = out[s - 1]
    return out


def baselines_result(replay: Replay) -> dict[str, Any]:
    """River's baselines on the replay's rows and plan, in the replay's figures' terms."""
    stream, plan = replay.stream, replay.plan
    started = time.perf_counter()
    probe = replay.forgetting_rows
    runs = run_baselines(stream, plan, replay.options.seed, probe=probe)
    sends = plan.sends()
    drifts = [d - plan.seed_rows for d in stream.drifts]
    details = {}
    for run in runs:
        figures = summary(run.correct, drifts=drifts, sends=sends)
        details[run.name] = {
            **figures,
            "rows_predicted": len(run.correct),
            "labels_learned": run.labels_learned,
            "probe_accuracy": run.probe_accuracy,
            # the same rows as it answered them while streaming (cf. forgetting)
            "probe_accuracy_when_streamed": (
                round(float(run.correct[probe - plan.seed_rows].mean()), 4) if len(probe) else None
            ),
            "seconds": round(run.seconds, 2),
        }
    accuracies = {n: d["prequential_accuracy"] for n, d in details.items()}
    return {
        "baselines": accuracies,
        "best_baseline": max(accuracies, key=lambda n: accuracies[n] or 0.0),
        "baseline_details": details,
        "baselines_s": round(time.perf_counter() - started, 1),
    }


def run_replay(options: ReplayOptions, console: Console) -> dict[str, Any]:
    replay = Replay(options, console)
    try:
        replay.start()
        replay.run()
        result = replay.result()
    except BaseException:
        replay.keep = True  # keep the logs of a failed run
        raise
    finally:
        replay.close()
    with console.status("River baselines on the same rows…"):
        result |= baselines_result(replay)
    if options.plot is not None:
        from cloud.replay.plot import plot_replay

        plot_replay(result, options.plot)
    return result


__all__ = ["Replay", "prepare_stream", "run_replay"]
