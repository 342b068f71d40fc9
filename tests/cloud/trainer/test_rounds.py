"""One round end to end (cloud/trainer/rounds.py) on a real redis and real int8 files:
the bootstrap publishes v1; a child that beats its parent on drifted data is
published with its explanation; one the gate refuses is not, and the report says why."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cloud.data.datasets import Dataset, drift, split
from cloud.data.replay import NewSamples, TrainerData
from cloud.learning.selection import WeightDecayChoice
from cloud.learning.weights import weights_to_bytes
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from cloud.trainer.rounds import RoundError, RoundRunner
from shared.keys import FleetKeys
from shared.signing import Signer
from shared.task import TaskSpec
from shared.tensors import TensorSpec

#: Small enough for seconds, large enough that a fine-tune on rotated digits wins.
FAST = {
    "bootstrap_epochs": 3,
    "epochs": 4,
    "update_mode": "full",  # the budgeted path has tests of its own (tests/cloud/export)
    "replay_capacity": 1000,
    "recent_train": 300,
}


@pytest.fixture
def runner(make_settings, redis_client, parts, signing_dir):
    """A RoundRunner over a flushed fleet, wired the way the trainer wires it (the
    session's digits, or ``of`` and ``spec``)."""

    def make(of=parts, spec="digits", **overrides):
        s = make_settings(**{**FAST, **overrides})
        keys = FleetKeys(s.fleet)
        data = TrainerData(redis_client, keys, s.data_options(of.seed_train))
        registry = Registry(redis_client, keys, DirBlobStore(s.blob_dir))
        publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"))
        return RoundRunner(s, redis_client, publisher, data, of, spec)

    return make


@pytest.fixture
def with_parent(runner, trained, exported, parts, keys):
    """A RoundRunner whose fleet has v1 (the session's trained model, as a bootstrap
    leaves it: the seed split in replay and holdout, the float weights stored)."""

    def make(**overrides):
        rounds = runner(**overrides)
        rounds.data.seed(parts.seed_train.X, parts.seed_train.y, holdout=False, seed=0)
        rounds.data.seed(parts.seed_holdout.X, parts.seed_holdout.y, holdout=True, seed=1)
        rounds.client.set(keys.weights(exported.sha256), weights_to_bytes(trained.model.net))
        rounds.publisher.publish(
            PublishRequest(
                "digits",
                exported.content,
                num_features=parts.seed_train.num_features,
                labels=parts.seed_train.labels,
                probe=exported.probe,
                runtime=exported.runtime,
                expected_parent=None,
            )
        )
        return rounds

    return make


def add_samples(data: TrainerData, X: np.ndarray, y: np.ndarray, *, holdout: bool) -> None:
    """Accept samples the way ingest does: plan their places, write them in one MULTI
    (classes ``[N]``, or a regression's targets ``[N, k]``)."""
    regression = np.ndim(y) == 2
    samples = NewSamples(
        np.asarray(X, np.float32),
        np.asarray(y, np.float32 if regression else np.int64),
        [0] * len(y) if regression else [int(v) for v in y],
        list(range(len(y))),
        [holdout] * len(y),
    )
    counters = data.read_counters(data.client)
    writes = data.plan(counters, samples)
    pipe = data.client.pipeline()
    data.add_to(pipe, counters, samples, writes)
    pipe.execute()


def drifted_feedback(data: TrainerData, parts) -> None:
    """Rotated digits: 400 to train on, 100 held out as the recent window."""
    X, y = drift("digits")(parts.stream.X[:500]), parts.stream.y[:500]
    add_samples(data, X[:400], y[:400], holdout=False)
    add_samples(data, X[400:], y[400:], holdout=True)


def test_a_round_needs_a_published_parent(runner):
    with pytest.raises(RoundError, match="bootstrap first"):
        runner().run(1, "count", {}, lambda: True)


def test_the_bootstrap_publishes_version_1_from_the_seed_split(runner, parts, keys):
    rounds = runner()
    report = rounds.bootstrap()
    assert (report.published, report.version, report.trigger) == (True, 1, "bootstrap")
    manifest = rounds.publisher.latest("digits")[2].manifest()
    assert manifest.parent_sha256 is None and manifest.explanation.trigger == "bootstrap"
    assert report.data_window["seed_split"] == len(parts.seed_train.y)
    # the gate's earlier data and the replay buffer start from the seed split
    assert len(rounds.data.holdout_set()[1]) == len(parts.seed_holdout.y)
    assert len(rounds.data.replay_set()[1]) == len(parts.seed_train.y)
    assert rounds.client.exists(keys.weights(report.sha256))
    # the edges' adapters start from the newest seed rows (ARCHITECTURE.md)
    # (the trained-on rows, then the held-out ones, which no version was trained on)
    exemplars = manifest.exemplars
    assert exemplars is not None
    X, y = exemplars.arrays(manifest.num_features)
    train, held = parts.seed_train, parts.seed_holdout
    h = exemplars.held_out
    assert h == min(len(held.y), 40) and len(y) - h == min(200 - h, len(train.y))
    assert np.array_equal(y[:-h], train.y[-(len(y) - h) :]) and np.array_equal(y[-h:], held.y[-h:])
    flat = np.asarray(held.X, np.float32).reshape(len(held.y), -1)
    assert np.array_equal(X[-h:], flat[-h:])


#: A decay of 10 leaves the digits model near chance: the other choice wins.
DECAYS = [10.0, 1e-4]


def test_the_bootstrap_chooses_the_weight_decay_by_cross_validation(runner):
    rounds = runner(weight_decay_choices=DECAYS)
    report = rounds.bootstrap()
    assert report.hyperparameters["weight_decay"] == 1e-4
    chosen = report.details["weight_decay"]
    assert chosen["weight_decay"] == 1e-4 and chosen["metric"] == "accuracy"
    scores = chosen["cross_validated"]
    assert set(scores) == {"0.0001", "10.0"} and scores["0.0001"] > scores["10.0"] + 0.2
    # without choices: the weight_decay setting, nothing scored
    plain = runner(weight_decay=0.02)
    assert plain.weight_decay() == WeightDecayChoice(0.02, {}, "accuracy")


def test_every_round_trains_with_the_chosen_weight_decay(with_parent, parts):
    # a trainer started on a fleet that has versions chooses again from the same data
    rounds = with_parent(weight_decay_choices=DECAYS, retrain_max_samples=100_000)
    quiet_feedback(rounds.data, parts)
    assert rounds._start(1).hp.weight_decay == 1e-4  # a fresh model's recipe
    rounds.data.mark_drift()
    assert rounds._start(2).hp.weight_decay == 1e-4  # a fine-tune's


def test_no_exemplars_when_the_setting_is_0(runner):
    rounds = runner(exemplars=0)
    rounds.bootstrap()
    assert rounds.publisher.latest("digits")[2].manifest().exemplars is None


def test_a_child_that_beats_its_parent_is_published_with_its_explanation(with_parent, parts, keys):
    rounds = with_parent()
    drifted_feedback(rounds.data, parts)

    report = rounds.run(1, "drift", {"new_samples": 500}, lambda: True)

    assert report.published and report.version == 2 and report.parent_version == 1
    assert report.details["decision"] == "publish"
    child, parent = report.details["child"]["recent"], report.details["parent"]["recent"]
    assert child["accuracy"] > parent["accuracy"]
    version, sha, signed = rounds.publisher.latest("digits")
    manifest = signed.manifest()
    assert (version, sha, manifest.parent_version) == (2, report.sha256, 1)
    assert manifest.explanation.trigger == "drift"
    assert manifest.explanation.data_window["new_samples"] == 500
    assert manifest.explanation.evaluation is not None
    assert manifest.metrics["recent_accuracy"] == pytest.approx(child["accuracy"])
    # the next round fine-tunes from exactly this child: its weights are stored with it
    assert rounds.client.exists(keys.weights(sha))
    parent = rounds.parent()
    assert (parent.version, parent.sha256) == (2, sha)


def test_a_child_the_gate_refuses_is_not_published_and_the_report_says_why(with_parent, parts):
    rounds = with_parent(min_gain=0.9)  # no fine-tune gains 90 points on the recent window
    drifted_feedback(rounds.data, parts)

    report = rounds.run(1, "count", {}, lambda: True)

    assert not report.published and report.version is None
    assert report.details["decision"] == "reject"
    assert "does not beat the parent" in report.reason
    assert [v for v, _ in rounds.publisher.versions("digits")] == [1]


def test_a_round_that_lost_its_lease_does_not_publish(with_parent, parts):
    rounds = with_parent()
    drifted_feedback(rounds.data, parts)

    report = rounds.run(1, "count", {}, lambda: False)

    assert report.details["decision"] == "publish"  # the gate agreed; the lease did not
    assert not report.published and "lease lost" in report.reason
    assert [v for v, _ in rounds.publisher.versions("digits")] == [1]


def flipped_feedback(data: TrainerData, parts, start: int = 0) -> None:
    """The same digits under another concept (each label moved to the next class):
    400 to train on, 100 held out as the recent window."""
    X, y = parts.stream.X[start : start + 500], (parts.stream.y[start : start + 500] + 1) % 10
    add_samples(data, X[:400], y[:400], holdout=False)
    add_samples(data, X[400:], y[400:], holdout=True)


def test_a_drift_mark_stays_where_the_drift_began_while_the_drift_is_young(with_parent, parts):
    data = with_parent(recent_window=20).data
    first = data.mark_drift()
    add_samples(data, parts.stream.X[:50], parts.stream.y[:50], holdout=False)
    add_samples(data, parts.stream.X[50:60], parts.stream.y[50:60], holdout=True)
    assert data.mark_drift() == first  # the same drift signalled again
    reference, held_since = data.since_drift(first)
    assert len(reference[1]) == 50 and held_since == 10
    np.testing.assert_array_equal(reference[1], parts.stream.y[:50])
    # once the recent window holds only samples from after it, a signal is a new drift
    add_samples(data, parts.stream.X[60:70], parts.stream.y[60:70], holdout=True)
    second = data.mark_drift()
    assert (second.ring, second.held) == (first.ring + 50, first.held + 20)
    assert data.drift_mark() == second


def test_after_an_overwritten_concept_a_round_learns_the_new_one(with_parent, parts):
    """The seed's digits, then the same digits under other labels: the replay buffer
    and the holdout argue for the old labels. Without deleting what the new labels
    contradict, the round cannot win; with it, the child learns the new concept."""
    stuck = with_parent(drop_contradicted=False)
    stuck.data.mark_drift()
    flipped_feedback(stuck.data, parts)
    refused = stuck.run(1, "drift", {}, lambda: True)
    assert not refused.published
    assert "concept" not in refused.data_window

    stuck.client.flushdb()
    rounds = with_parent()
    rounds.data.mark_drift()
    flipped_feedback(rounds.data, parts)
    stored = len(rounds.data.training_set()[1])
    report = rounds.run(1, "drift", {}, lambda: True)

    concept = report.data_window["concept"]
    assert report.published, report.reason
    assert concept["reference_samples"] == 300  # the ring: the newest training samples
    assert concept["training_forgotten"] > 0.3 * stored
    assert len(rounds.data.training_set()[1]) == stored - concept["training_forgotten"]
    assert concept["earlier_forgotten"] > 0 and concept["recent_since_drift"] == 100
    assert report.hyperparameters["lr"] == 1e-2  # a young drift's
    # the 300 labels since the drift, repeated to half of what the round trained on
    assert concept["concept_share"] == pytest.approx(0.5, abs=0.05)
    child, parent = report.details["child"]["recent"], report.details["parent"]["recent"]
    assert child["accuracy"] > 0.5 > 0.1 > parent["accuracy"]


def test_labels_that_agree_with_the_old_concept_contradict_little(with_parent, parts):
    """Rotated digits (a new region of the input, the labels as before): few stored
    samples are deleted (the model of the new region errs on a few old ones: 11 of
    180 measured), and forgetting is still checked on the earlier data."""
    rounds = with_parent()
    before = len(rounds.data.holdout_set()[1])
    rounds.data.mark_drift()
    drifted_feedback(rounds.data, parts)
    report = rounds.run(1, "drift", {}, lambda: True)
    concept = report.data_window["concept"]
    assert concept["earlier_forgotten"] < 0.1 * before
    assert report.details["child"]["earlier"]["samples"] > 0.9 * before


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_data_parallel_round_publishes_a_child_that_beats_its_parent(with_parent, parts):
    rounds = with_parent(train_workers=2, train_staleness=1)
    drifted_feedback(rounds.data, parts)

    report = rounds.run(1, "drift", {"new_samples": 500}, lambda: True)

    assert report.published and report.version == 2, report.reason
    assert (report.hyperparameters["workers"], report.hyperparameters["staleness"]) == (2, 1)
    child, parent = report.details["child"]["recent"], report.details["parent"]["recent"]
    assert child["accuracy"] > parent["accuracy"]


def test_the_trainer_reads_its_parallelism_and_refuses_bad_values(make_settings):
    from pydantic import ValidationError

    assert make_settings().train_workers == 1  # a round trains in the trainer, as always
    assert make_settings(train_staleness="inf").train_staleness is None
    assert make_settings(train_workers=4, train_staleness="2").train_staleness == 2
    for bad in ({"train_workers": 0}, {"train_staleness": -1}):
        with pytest.raises(ValidationError, match="greater than or equal to"):
            make_settings(**bad)


def quiet_feedback(data: TrainerData, parts) -> None:
    """The digits as they were: 400 to train on, 100 held out as the recent window."""
    X, y = parts.stream.X[:500], parts.stream.y[:500]
    add_samples(data, X[:400], y[:400], holdout=False)
    add_samples(data, X[400:], y[400:], holdout=True)


def test_a_round_retrains_afresh_only_while_its_training_set_is_small(with_parent, parts):
    rounds = with_parent(bootstrap_epochs=7)
    quiet_feedback(rounds.data, parts)
    stored = len(rounds.data.training_set()[1])  # the replay buffer and the ring
    for limit, retrain in ((stored, True), (stored - 1, False), (0, False)):
        rounds.settings.retrain_max_samples = limit
        rnd = rounds._start(3)
        assert len(rnd.y) == stored
        assert rnd.retrain is retrain
        # a fresh model learns with the bootstrap's recipe, a fine-tune with the rounds'
        assert rnd.hp.epochs == (7 if retrain else FAST["epochs"])
        assert rnd.hp.seed == 3  # the settings' seed (0) plus the round's number
    # after a drift signal, even an old one, the stream is not stationary: fine-tune
    rounds.settings.retrain_max_samples = stored
    rounds.data.mark_drift()
    rnd = rounds._start(3)
    assert not rnd.concept and not rnd.retrain


def test_a_young_drift_is_fine_tuned_whatever_its_training_set(with_parent, parts):
    # the drift's own recipe (drift_epochs at drift_lr, the labels since it weighted)
    rounds = with_parent(retrain_max_samples=100_000, drift_epochs=2)
    rounds.data.mark_drift()
    flipped_feedback(rounds.data, parts)
    rnd = rounds._start(1)
    assert rnd.concept and not rnd.retrain
    assert (rnd.hp.epochs, rnd.hp.lr) == (2, 1e-2)


def test_a_retrained_round_does_not_start_from_the_parent_and_ships_a_fresh_export(
    with_parent, parts, keys, trained
):
    rounds = with_parent(retrain_max_samples=10_000, bootstrap_epochs=10, update_mode="budgeted")
    quiet_feedback(rounds.data, parts)
    # the parent's stored float weights scrambled: a fine-tune would start from noise
    sha = rounds.publisher.latest("digits")[1]
    net = trained.model.net
    saved = {k: v.clone() for k, v in net.state_dict().items()}
    try:
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn_like(p) * 5)
        rounds.client.set(keys.weights(sha), weights_to_bytes(net))
    finally:
        net.load_state_dict(saved)

    report = rounds.run(1, "count", {}, lambda: True)

    assert report.hyperparameters["retrained"] is True
    assert report.hyperparameters["epochs"] == 10
    # every weight is new: no budgeted delta on the parent's grid, a fresh export
    delta = report.details["delta"]
    assert (delta["reason"], delta["scales"]) == ("retrained", "recalibrated")
    # learnt from the data alone, as well as the bootstrap did from the seed split
    assert report.details["child"]["recent"]["accuracy"] > 0.85


def temperatures(offset: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A machine's temperature from four sensors; ``offset`` moves the first sensor's
    zero (a replaced sensor: new inputs, the same law)."""
    rng = np.random.default_rng(seed)
    X = rng.normal([50, 1, 0, 3], [10, 0.2, 1, 1], size=(n, 4)).astype(np.float32)
    y = 20 + 0.5 * X[:, 0] + 4 * X[:, 2] + rng.normal(0, 0.5, n)
    X[:, 0] += offset
    return X, y[:, None].astype(np.float32)


def test_a_regressors_young_drift_weighs_the_labels_since_it_and_deletes_nothing(
    runner, redis_client
):
    """A regressor's drift round trains on the labels since the drift at concept_share,
    harder, and is judged on them; no stored sample goes (a target is no class another
    label contradicts). With drop_contradicted off it trains on the store as it is."""
    X, y = temperatures(0.0, 900, seed=0)
    dataset = Dataset("temps", "tabular", X, y, TensorSpec.flat(4), TaskSpec.regression(["t"]))
    parts = split(dataset, seed=0)
    Xd, yd = temperatures(40.0, 250, seed=1)

    def drifted(**overrides):
        redis_client.flushdb()
        rounds = runner(parts, "regression_mlp", model_name="temps", **overrides)
        assert rounds.bootstrap().published
        rounds.data.mark_drift()
        add_samples(rounds.data, Xd[:200], yd[:200], holdout=False)
        add_samples(rounds.data, Xd[200:], yd[200:], holdout=True)
        return rounds

    rounds = drifted()
    stored = len(rounds.data.training_set()[1])
    report = rounds.run(1, "drift", {}, lambda: True)
    concept = report.data_window["concept"]
    assert concept["reference_samples"] == 200
    assert "training_forgotten" not in concept and "earlier_forgotten" not in concept
    assert len(rounds.data.training_set()[1]) == stored  # nothing deleted
    assert concept["concept_share"] == pytest.approx(0.5, abs=0.05)
    assert concept["recent_since_drift"] == 50  # judged on the world since the drift
    assert report.hyperparameters["lr"] == 1e-2  # a young drift's
    assert report.published, report.reason
    child, parent = report.details["child"]["recent"], report.details["parent"]["recent"]
    assert child["mae"] < 0.5 * parent["mae"]

    quiet = drifted(drop_contradicted=False).run(1, "drift", {}, lambda: True)
    assert "concept" not in quiet.data_window
    assert quiet.hyperparameters["lr"] != 1e-2
