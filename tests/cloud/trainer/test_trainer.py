"""The trainer loop: bootstrap to v1, a drift round to v2, status, the lease."""

from __future__ import annotations

import threading
import time

import pytest

from cloud.data.datasets import drift
from cloud.trainer.loop import Trainer
from shared.messages import TrainerStatus
from shared.runtime import TFLiteModel
from shared.signing import Verifier
from tests.cloud.conftest import FAST_TRAINER

#: The fleet fixture's fast settings; each test sets its own lease.
FAST = {k: v for k, v in FAST_TRAINER.items() if k != "lock_ttl_ms"}


@pytest.fixture
def trainer(make_settings, digits):
    # A lease longer than any round on a loaded machine: these tests are not about expiry.
    t = Trainer(make_settings(**FAST, lock_ttl_ms=120_000), dataset=digits, background_rounds=False)
    yield t
    t.close()


def status_of(trainer: Trainer) -> TrainerStatus:
    return TrainerStatus.from_wire(trainer.client.get(trainer.keys.trainer("digits")))


def test_bootstrap_publishes_v1_once(trainer, make_settings, digits, signing_dir):
    trainer.start()
    version, sha, signed = trainer.publisher.latest("digits")
    Verifier.from_file(signing_dir / "signing.pub").verify(
        signed.manifest_json.encode(), signed.signature
    )
    m = signed.manifest()
    assert (
        version == 1
        and m.explanation.trigger == "bootstrap"
        and m.metrics["earlier_accuracy"] > 0.9
    )
    assert m.explanation.data_window["seed_split"] == len(trainer.parts.seed_train.y)
    assert TFLiteModel(trainer.publisher.content(sha)).check_probe(m.probe)[0] >= 0.95
    assert trainer.client.exists(trainer.keys.weights(sha))
    st = status_of(trainer)
    assert [v.version for v in st.published] == [1] and st.last_round["trigger"] == "bootstrap"
    # A second trainer (another process) neither bootstraps again nor runs rounds.
    other = Trainer(
        make_settings(**FAST, consumer="trainer-2"), dataset=digits, background_rounds=False
    )
    other.start()
    assert not other.lease.held and trainer.publisher.versions("digits") == [(1, sha)]
    other.close()


def feed(trainer, events, X, y, start, predicted):
    events.send(
        trainer.client, trainer.keys.feedback, events.many(X, y, start=start, predicted=predicted)
    )
    for _ in range(50):
        if trainer.step(block_ms=10).entries == 0:
            break


# The session's published fleet (tests/cloud/conftest.py) is this round: a trainer fed
# 300 truths the edges served well, then 600 rotated ones (its DriftRun is what the
# trainer said on the way). Checked here, not run twice.
def test_a_drift_round_publishes_a_better_v2(published_fleet, parts):
    run = published_fleet.run
    v1 = TFLiteModel(run.contents[0])
    sha1 = published_fleet.shas[0]
    X, y = parts.stream.X, parts.stream.y
    # Before the drift: the edges serve v1 well, no round starts.
    assert run.quiet == (0, None)
    # The inputs rotate; v1's served accuracy collapses and the feedback says so.
    assert run.rounds == 1, run.last_round
    version, sha2, signed = run.latest
    m = signed.manifest()
    assert version == 2 and m.parent_sha256 == sha1 and m.explanation.trigger == "drift"
    assert m.metrics["recent_accuracy"] > m.metrics["parent_recent_accuracy"] + 0.1
    assert m.metrics["earlier_accuracy"] >= m.metrics["parent_earlier_accuracy"] - 0.03
    window = m.explanation.data_window
    assert (
        window["new_samples"] > 0
        and sum(window["labeled_per_class"].values()) == window["new_samples"]
    )
    assert window["stream_ids"][0] < window["stream_ids"][1]
    # a young drift's round (once 50 labels since the drift say what the world is) trains
    # harder (drift_epochs, drift_lr) than a quiet one (epochs 8); which one this round was
    # depends on how many labels had come when the signal started it
    hp = m.explanation.hyperparameters
    young = "concept" in window
    assert (hp["epochs"], hp["lr"]) == ((10, 1e-2) if young else (8, 1e-3))
    assert "drift" in m.explanation.summary
    assert (
        m.explanation.details["parent"]["recent"]["accuracy"] == m.metrics["parent_recent_accuracy"]
    )
    # The frozen grid could not follow the drift: the round shipped a fresh export, and says
    # why (the weights left the grid's range, or the budgeted child lost to the fresh one).
    st = run.status
    delta = st.last_round["details"]["delta"]
    assert delta["scales"] == "recalibrated" and delta["reason"] in ("clipping", "budget")
    if delta["reason"] == "budget":
        assert "a fresh export" in delta["budgeted_rejected"]
    # v2 serves the rotated digits far better than v1 did, in the edge runtime.
    assert sha2 == published_fleet.shas[1]
    v2 = TFLiteModel(run.contents[1])
    Xt, yt = drift("digits")(X[900:]), y[900:]
    assert (v2.predict_proba_batch(Xt).argmax(1) == yt).mean() > (
        v1.predict_proba_batch(Xt).argmax(1) == yt
    ).mean() + 0.3
    assert st.rounds == 1 and [v.version for v in st.published] == [1, 2]
    assert st.feedback_accepted == 900 and st.last_round["published"]
    stages = {"train_s", "export_s", "gate_s", "explain_s", "publish_s"}
    assert set(st.last_round["timings"]) == stages


def test_count_trigger_and_rejection_are_recorded(make_settings, digits, events, parts):
    trainer = Trainer(
        make_settings(**{**FAST, "round_min_samples": 150, "min_gain": 0.5}),
        dataset=digits,
        background_rounds=False,
    )
    trainer.start()
    feed(trainer, events, parts.stream.X[:200], parts.stream.y[:200], 0, None)
    assert trainer.status.rounds_rejected == 1 and trainer.status.rounds == 0
    last = status_of(trainer).last_round
    assert (
        last["trigger"] == "count" and not last["published"] and "does not beat" in last["reason"]
    )
    assert trainer.publisher.versions("digits")[-1][0] == 1
    trainer.close()


def test_run_loop_ingests_while_a_round_runs_and_stops_cleanly(
    make_settings, digits, events, parts
):
    trainer = Trainer(
        make_settings(**{**FAST, "round_min_samples": 100, "min_gain": -1.0}), dataset=digits
    )
    stop = threading.Event()
    thread = threading.Thread(target=trainer.run, args=(stop,))
    thread.start()
    deadline = time.monotonic() + 60
    while trainer.publisher.latest("digits") is None and time.monotonic() < deadline:
        time.sleep(0.1)
    events.send(
        trainer.client,
        trainer.keys.feedback,
        events.many(parts.stream.X[:150], parts.stream.y[:150]),
    )
    while trainer._round is None and time.monotonic() < deadline:
        time.sleep(0.01)
    events.send(
        trainer.client,
        trainer.keys.feedback,
        events.many(parts.stream.X[150:300], parts.stream.y[150:300], start=50),
    )
    while trainer.data.stats()["accepted"] < 300 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert trainer._round is not None, "the second batch should be ingested while the round runs"
    while trainer.publisher.latest("digits")[0] < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    stop.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert trainer.publisher.latest("digits")[0] >= 2  # the second batch may start another round
    assert not trainer.client.exists(trainer.keys.trainer_lock("digits"))  # lease released
    assert status_of(trainer).feedback_accepted == 300


def test_a_standby_trainer_takes_over_when_the_lease_expires(make_settings, digits):
    a = Trainer(make_settings(**FAST, lock_ttl_ms=300), dataset=digits, background_rounds=False)
    b = Trainer(
        make_settings(**FAST, lock_ttl_ms=300, consumer="trainer-2"),
        dataset=digits,
        background_rounds=False,
    )
    a.lease.refresh()
    b.start()
    assert a.lease.held and not b.lease.held
    time.sleep(0.4)  # a dies without releasing
    b._refresh_lease(force=True)
    assert b.lease.held and not a.lease.refresh()
    b.close()
    a.close()


def test_a_round_slower_than_the_lease_still_publishes_unless_another_trainer_took_over(
    make_settings, digits
):
    # A round run in the step's thread cannot renew the lease while it trains.
    a = Trainer(make_settings(**FAST, lock_ttl_ms=300), dataset=digits, background_rounds=False)
    b = Trainer(
        make_settings(**FAST, lock_ttl_ms=300, consumer="trainer-2"),
        dataset=digits,
        background_rounds=False,
    )
    a.lease.refresh()
    time.sleep(0.4)  # the round outlives the lease; nobody else wanted it
    assert not a.lease.held and a._may_publish() and a.lease.held
    time.sleep(0.4)
    b._refresh_lease(force=True)  # this time the standby took over
    assert b.lease.held and not a._may_publish()
    b.close()
    a.close()


def test_a_csv_dataset_runs_through_the_same_trainer(make_settings, tmp_path, redis_client, events):
    from sklearn.datasets import make_classification

    X, y = make_classification(
        n_samples=600, n_features=6, n_informative=4, n_classes=3, random_state=0
    )
    X = X * [1, 10, 100, 1, 1, 1] + [0, 50, -300, 0, 0, 0]  # raw units: the model standardizes
    rows = ["a,b,c,d,e,f,kind"] + [
        ",".join(f"{v:.5f}" for v in x) + f",{'xyz'[c]}" for x, c in zip(X, y, strict=True)
    ]
    path = tmp_path / "sensors.csv"
    path.write_text("\n".join(rows) + "\n")
    settings = make_settings(**FAST, dataset=f"csv:{path}", label_column="kind", model="sensors")
    t = Trainer(settings, background_rounds=False)
    t.start()
    version, sha, signed = t.publisher.latest("sensors")
    m = signed.manifest()
    assert version == 1 and m.labels == ["x", "y", "z"] and m.num_features == 6
    assert m.metrics["earlier_accuracy"] > 0.7
    tfl = TFLiteModel(t.publisher.content(sha))
    assert tfl.heavy_ops_int8() and tfl.input_dtype == "float32"
    # The same trainer refuses a dataset that does not match the published model.
    with pytest.raises(Exception, match="use another model name"):
        Trainer(make_settings(**FAST, model="sensors"), background_rounds=False).start()
    t.close()
