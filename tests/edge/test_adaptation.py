"""Adaptation on the edge (edge/adaptation.py): a real daemon serving the real digits
model learns real labelled digits. Labels that contradict the model turn the adapter
on and the answers get better; labels that agree never do; a new version inherits the
comparison, judged again on the held-out labels; "off" never adapts."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import redis
from helpers import labeled_digits, make_manifest, publish_version, variant

from edge.adaptation import (
    AVERAGE,
    LINEAR,
    TREE,
    Adapter,
    KnnWindow,
    OnlineLinear,
    WindowTree,
    sign_test_p,
    wanted,
)
from edge.daemon import EdgeDaemon
from edge.fallback import ServingChain
from shared.keys import FleetKeys
from shared.messages import Exemplars
from shared.runtime import TFLiteModel
from tests.serving import Call, Signing, wait_for

Factory = Callable[..., EdgeDaemon]

X, Y = labeled_digits()


def shifted(y: np.ndarray) -> np.ndarray:
    """Labels the model contradicts: each digit's label moved by one class."""
    return (y + 1) % 10


@pytest.fixture
def serving(
    daemon_factory: Factory, redis_client: redis.Redis, keys: FleetKeys, signing: Signing
) -> Callable[..., EdgeDaemon]:
    def make(**overrides: object) -> EdgeDaemon:
        daemon = daemon_factory(**overrides)
        publish_version(redis_client, keys, signing.signer, variant(1), 1)
        wait_for(lambda: daemon.chain.current is not None, what="v1 served")
        return daemon

    return make


def teach(daemon: EdgeDaemon, rows: range, labels: np.ndarray) -> list[bool]:
    """Predict each row, then send its label by request id; whether each answer was right."""
    right = []
    for i in rows:
        p = daemon.predict(X[i].copy())
        right.append(p.label == labels[i])
        daemon.feedback(label=int(labels[i]), request_id=p.request_id)
    return right


def test_contradicting_labels_turn_it_on_and_the_answers_get_better(
    serving: Callable[..., EdgeDaemon],
) -> None:
    daemon = serving()
    labels = shifted(Y)
    before = teach(daemon, range(0, 60), labels)
    assert daemon.chain.adapting
    after = teach(daemon, range(300, 600), labels)
    assert np.mean(before[:15]) < 0.2 and np.mean(after) > 0.8
    p = daemon.predict(X[0].copy())
    assert p.adapted and p.label == labels[0] and p.probabilities is not None
    assert abs(float(p.probabilities.sum()) - 1.0) < 1e-6
    # The feedback join keeps the model's own answer, which the guard and the trainer judge.
    recalled = daemon.chain.recall(p.request_id)
    assert recalled is not None and recalled.predicted == int(Y[0]) != p.label
    counters = daemon.health().models["digits"].counters
    assert counters.adapter_active and counters.adapter_switches == 1
    assert counters.adapter_labels == 360 and counters.adapted_predictions >= 300
    assert counters.labeled_correct < 0.2 * counters.labeled  # the model's, not the adapter's


def test_the_http_answer_says_it_was_adapted(
    serving: Callable[..., EdgeDaemon], serve: Callable[[EdgeDaemon], Call]
) -> None:
    daemon = serving()
    call = serve(daemon)
    status, body = call("POST", "/v1/predict", {"x": X[0].tolist()})
    assert status == 200 and body["adapted"] is False
    labels = shifted(Y)
    for i in range(60):
        status, body = call("POST", "/v1/predict", {"x": X[i].tolist()})
        call("POST", "/v1/feedback", {"request_id": body["request_id"], "label": int(labels[i])})
    status, body = call("POST", "/v1/predict", {"x": [X[300].tolist(), X[301].tolist()]})
    assert status == 200
    assert [(p["adapted"], p["label"]) for p in body["predictions"]] == [
        (True, labels[300]),
        (True, labels[301]),
    ]
    assert body["predictions"][0]["fallback"] is False
    status, health = call("GET", "/v1/health")
    assert health["counters"]["adapter_active"] is True


def test_labels_that_agree_with_the_model_never_turn_it_on(
    serving: Callable[..., EdgeDaemon],
) -> None:
    daemon = serving()
    own = np.array([daemon.predict(X[i].copy()).label for i in range(len(X))])
    assert not any(daemon.predict(X[i].copy()).adapted for i in range(3))
    teach(daemon, range(0, 300), own)
    assert not daemon.chain.adapting
    counters = daemon.health().models["digits"].counters
    assert counters.adapter_labels == 300 and counters.adapter_switches == 0
    assert counters.adapted_predictions == 0


def test_a_new_version_inherits_the_comparison_judged_on_the_held_out_labels(
    serving: Callable[..., EdgeDaemon],
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
) -> None:
    daemon = serving()
    labels = shifted(Y)
    teach(daemon, range(0, 150), labels)
    assert daemon.chain.adapting
    publish_version(redis_client, keys, signing.signer, variant(2), 2)
    wait_for(lambda: daemon.chain.current and daemon.chain.current.version == 2, what="v2")
    assert not daemon.chain.adapting and not daemon.predict(X[0].copy()).adapted
    adapter = daemon.served("digits")._adapter
    assert adapter is not None
    teach(daemon, range(150, 151), labels)
    # v2 inherits v1's record and is judged again on the labels the trainers hold out
    # (no version trained on them): as wrong as v1, it gives the adapter back the
    # requests on the next label
    assert adapter.rejudged > 0 and daemon.chain.adapting
    assert daemon.health().models["digits"].counters.adapter_switches == 2


@pytest.mark.parametrize(("held_out", "labels_to_answer"), [(0, 3), (20, 1)])
def test_a_manifest_s_exemplars_start_the_adapter(
    daemon_factory: Factory,
    redis_client: redis.Redis,
    keys: FleetKeys,
    signing: Signing,
    held_out: int,
    labels_to_answer: int,
) -> None:
    """A version whose manifest carries exemplars (seed rows; labels the model
    contradicts here) starts the adapter from them: it votes on the device's first
    label, where an empty one first needs 11 labels to vote at all. Exemplars the
    model was trained on are never compared with it, so the adapter answers after 3
    wins on the device's labels (alpha 0.2); the held-out ones are, test-then-train, so with 20 of
    them it answers from the device's first label on."""
    labels = shifted(Y)
    daemon = daemon_factory()
    exemplars = Exemplars.of(X[:300], labels[:300], held_out=held_out)
    manifest = make_manifest(variant(1), 1, exemplars=exemplars)
    publish_version(redis_client, keys, signing.signer, variant(1), 1, manifest=manifest)
    wait_for(lambda: daemon.chain.current is not None, what="v1 served")
    right = teach(daemon, range(300, 300 + labels_to_answer), labels)
    adapter = daemon.served("digits")._adapter
    assert adapter is not None and adapter.exemplars == 300
    assert adapter.labels == labels_to_answer and daemon.chain.adapting
    assert not any(right)  # the model answered until then
    assert np.mean(teach(daemon, range(308, 408), labels)) > 0.8

    empty = Adapter(10)
    for i in range(300, 308):
        empty.learn(X[i], int(labels[i]), int(Y[i]), "a")
    assert empty.comparison == (0, 0) and not empty.active


def test_off_never_adapts(serving: Callable[..., EdgeDaemon]) -> None:
    daemon = serving(adaptation="off")
    teach(daemon, range(0, 200), shifted(Y))
    assert not daemon.chain.adapting
    counters = daemon.health().models["digits"].counters
    assert counters.adapter_labels == 0 and counters.adapted_predictions == 0


def test_feedback_by_input_teaches_it_too(serving: Callable[..., EdgeDaemon]) -> None:
    daemon = serving()
    labels = shifted(Y)
    for i in range(60):
        daemon.feedback(label=int(labels[i]), x=X[i].tolist())
    assert daemon.chain.adapting
    answers = daemon.predict_batch(X[300:340].copy())
    assert all(p.adapted for p in answers)
    assert np.mean([p.label == labels[300 + k] for k, p in enumerate(answers)]) > 0.8
    recalled = daemon.chain.recall(answers[0].request_id)
    own = daemon.chain.current.answers(X[300:301]).argmax()  # type: ignore[union-attr]
    assert recalled is not None and recalled.predicted == own != answers[0].label


# -- the parts ---------------------------------------------------------------------


def test_sign_test() -> None:
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(7, 0) == pytest.approx(1 / 128)
    assert sign_test_p(6, 0) > 0.01 >= sign_test_p(7, 0)
    assert sign_test_p(5, 5) == pytest.approx(638 / 1024)


def test_knn_ties_go_to_the_newest_and_batches_agree() -> None:
    knn = KnnWindow(num_classes=3, window=10, ks=(3, 1, 5))
    same = np.zeros(4, np.float32)
    for y in (0, 0, 0, 1, 1, 2):
        knn.learn_one(same, y)
    assert knn.predict_one(same, 3) == pytest.approx([0.0, 2 / 3, 1 / 3])
    # newest first the labels are 2 1 1 0 0 0, all equally near
    assert knn.predict_each(same) == [
        pytest.approx([0.0, 2 / 3, 1 / 3]),
        [0.0, 0.0, 1.0],
        pytest.approx([0.4, 0.4, 0.2]),
    ]
    rng = np.random.default_rng(0)
    for y in rng.integers(0, 3, 20):
        knn.learn_one(rng.normal(size=4).astype(np.float32), int(y))
    assert len(knn) == 10  # the window slides
    xs = rng.normal(size=(6, 4)).astype(np.float32)
    for k in (1, 3, 5):
        many = knn.predict_many(xs, k)
        assert many is not None
        assert np.allclose(many, np.array([knn.predict_one(x, k) for x in xs]))
    each = [knn.predict_each(x) for x in xs]
    assert all(
        e == [knn.predict_one(x, k) for k in (3, 1, 5)] for e, x in zip(each, xs, strict=True)
    )


def test_it_answers_with_the_k_that_was_right_most_often() -> None:
    adapter = Adapter(2, window=100, ks=(5, 1))
    x = np.zeros(1, np.float32)
    for y in [0] * 10 + [1] * 3:  # k = 1 follows the newest label at once, k = 5 after 3
        adapter.learn(x, y, None, "a")
    assert adapter.k == 1 and adapter.answer(x) == [0.0, 1.0]


@pytest.mark.parametrize(("choose", "answering"), [(500, (None, 5)), (200, LINEAR)])
def test_the_voters_record_is_choose_labels_long(choose: int, answering: tuple) -> None:
    """300 labels on which k=5 alone is right, then 250 on which the regression alone
    is: over the last 500 labels k=5 still leads (300 to 250), over the last 200 the
    regression does. The guard's record (``compare``) is another length."""
    adapter = Adapter(2, ks=(5,), spans=(), trees=(), average=False, compare=200, choose=choose)
    assert adapter.voters == ((None, 5), LINEAR)
    for right in [np.array([1, 0])] * 300 + [np.array([0, 1])] * 250:
        adapter._score_ks(right)
    assert adapter.voter == answering


def test_the_guard_stops_it_as_soon_as_it_is_no_longer_better() -> None:
    switches: list[bool] = []

    def switch(on: bool, sha: str) -> bool:
        switches.append(on)
        return True

    adapter = Adapter(2, window=20, ks=(1,), compare=20, linear=False, on_switch=switch)
    x = np.zeros(1, np.float32)
    for _ in range(8):  # the adapter repeats the last label, the model says 0
        adapter.learn(x, 1, 0, "a")
    assert adapter.active and switches == [True]
    for y in (0, 1, 0, 1, 0, 1, 0, 1):  # now the adapter is wrong each time the label flips
        adapter.learn(x, y, y, "a")
    assert not adapter.active and switches == [True, False]
    adapter.learn(x, 1, 0, "b")  # another version inherits the record (no held-out labels)
    assert adapter.comparison == (8, 8) and not adapter.active


def test_a_new_version_is_judged_again_on_the_held_out_labels_only() -> None:
    """The adapter (k = 1 on one input) is right on every label after the first; v "a"
    is always wrong. A new version inherits the record, and its answers replace the
    old version's on the held-out labels in the comparison window; labels not held
    out, and those older than the window, keep the answer of the version that served
    them (a new version may have been trained on them). A version significantly
    better than the one before on the held-out labels restarts the record from them."""
    adapter = Adapter(2, window=100, ks=(1,), compare=40)
    x = np.zeros(1, np.float32)
    for i in range(60):
        adapter.learn(x, 1, 0, "a", held_out=i % 4 == 0)  # 15 held out, 10 in the window
    assert adapter.active and adapter.comparison == (40, 0)
    answers = iter([1, 1] + [0] * 8)
    adapter.judge = lambda sample: (next(answers), "b")  # right on 2 of the 10: not better
    adapter.learn(x, 1, 1, "b")  # a tie; the window drops label 20, one of the 2
    assert adapter.rejudged == 10 and adapter.comparison == (38, 0) and adapter.active
    assert adapter.restarts == 0
    adapter.judge = lambda sample: (1, "c")  # right on all 9 left: better on 8 (p = 1/256)
    adapter.learn(x, 1, 1, "c")
    assert adapter.rejudged == 19 and adapter.restarts == 1
    assert adapter.comparison == (0, 0) and not adapter.active  # 9 ties and the new label
    adapter.judge = lambda sample: (0, "e")  # another version serves already: no judging
    adapter.learn(x, 1, 0, "d")
    assert adapter.rejudged == 19 and adapter.comparison == (1, 0)


def test_the_chain_refuses_an_adapter_for_a_version_it_no_longer_serves() -> None:
    chain = ServingChain()
    model = TFLiteModel(variant(1), version=1)
    chain.set_models(current=model, last_known_good=None, baseline=None)
    adapter = Adapter(10)
    assert not chain.adapt(adapter, "0" * 64)
    assert chain.adapt(adapter, model.sha256) and chain.adapting
    chain.swap(TFLiteModel(variant(2), version=2))
    assert not chain.adapting


def test_auto_adapts_small_classifiers_only() -> None:
    assert wanted("auto", True, 64) and not wanted("auto", True, 65)
    assert wanted("knn", True, 4096) and not wanted("auto", False, 8)
    assert not wanted("off", True, 8) and not wanted("knn", None, 8)


@pytest.mark.parametrize(("alpha", "wins"), [(0.01, 7), (0.05, 5)])
def test_alpha_sets_how_many_wins_turn_it_on(alpha: float, wins: int) -> None:
    adapter = Adapter(2, window=20, ks=(1,), compare=20, alpha=alpha)
    x = np.zeros(1, np.float32)
    adapter.learn(x, 1, 0, "a")  # the first label: nothing to vote with yet
    for _ in range(wins):
        assert not adapter.active
        adapter.learn(x, 1, 0, "a")  # the adapter repeats the last label, the model says 0
    assert adapter.active and adapter.comparison == (wins, 0)


def test_once_answering_it_goes_on_at_the_keep_alpha() -> None:
    """alpha 0.01 turns it on (7 wins and no loss); it keeps answering while its record
    is still ahead with p <= 0.05, through a new version that takes the record over;
    an adapter that was not answering needs p <= 0.01 for the same record."""
    adapter = Adapter(2, window=20, ks=(1,), compare=40, alpha=0.01, keep_alpha=0.05)
    x = np.zeros(1, np.float32)
    for _ in range(8):  # the adapter repeats the last label (1), the model says 0
        adapter.learn(x, 1, 0, "a")
    assert adapter.active and adapter.comparison == (7, 0)
    for y in (1, 0, 1):  # the model right alone twice: 7/2, p = 0.090 -> off;
        adapter.learn(x, y, y, "a")  # first one label lost each: 7/1 (p = 0.035) on
    assert adapter.comparison == (7, 2) and not adapter.active
    for _ in range(3):  # 10/2 (p = 0.019): between the two alphas; it was off: still off
        adapter.learn(x, 1, 0, "a")
    assert adapter.comparison == (10, 2) and not adapter.active
    adapter.learn(x, 1, 0, "a")  # 11/2 (p = 0.011): still off; 12/2 (p = 0.0065): on
    adapter.learn(x, 1, 0, "a")
    assert adapter.comparison == (12, 2) and adapter.active
    adapter.learn(x, 0, 0, "b")  # a new version takes the record over; 12/3 (p = 0.018)
    assert adapter.comparison == (12, 3) and adapter.active


def test_after_an_abrupt_drift_it_answers_from_its_newest_samples() -> None:
    """The same inputs change class: over the whole window their neighbours are mostly
    old labels, over a span of the 10 newest only new ones, so that voter is right
    more often and answers."""
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (130, 1)).astype(np.float32)
    adapter = Adapter(2, window=100, ks=(3,), spans=(10,), compare=20)
    assert adapter.knn.voters == ((None, 3), (10, 3))
    for x in xs[:100]:
        adapter.learn(x, 0, 0, "a")
    assert adapter.voter == (None, 3)
    for x in xs[100:]:
        adapter.learn(x, 1, 0, "a")
    assert adapter.voter == (10, 3)
    probe = np.array([0.5], np.float32)
    window = adapter.knn.predict_one(probe, 3)
    assert window is not None and window[0] > 0.5  # the whole window: mostly old labels
    assert adapter.answer(probe) == [0.0, 1.0] == adapter.knn.predict_one(probe, 3, span=10)
    assert adapter.knn.predict_each(probe) == [window, [0.0, 1.0]]


def test_where_the_concept_is_linear_the_regression_answers() -> None:
    """Two informative features and eight of noise: the kNN's distances are blurred
    by the noise, the online regression weighs the two, so it is right more often,
    becomes the voter that answers, and its batch answer is its single answers."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1500, 10)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(int)
    adapter = Adapter(2, window=300, ks=(5,), compare=200, trees=(), average=False)
    assert adapter.voters == ((None, 5), LINEAR)
    for x, label in zip(X, y, strict=True):
        adapter.learn(x, int(label), None, "a")
    assert adapter.voter == LINEAR and adapter.k == 0
    assert adapter.linear is not None
    probe = rng.normal(size=(200, 10)).astype(np.float32)
    truth = probe[:, 0] + 0.5 * probe[:, 1] > 0
    batch = adapter.answer_many(probe)
    assert batch is not None
    assert np.mean(batch.argmax(axis=1) == truth) > 0.93
    one = adapter.answer(probe[0])
    assert one is not None and np.allclose(batch[0], one, atol=1e-6)
    assert np.allclose(one, adapter.linear.predict_one(probe[0]))


def test_the_regression_follows_a_rotating_boundary() -> None:
    """The boundary turns a quarter circle over the stream: one SGD step a label keeps
    the regression close to the current boundary (its last 200 answers mostly right)."""
    rng = np.random.default_rng(2)
    model = OnlineLinear(2)
    right = []
    for t in range(4000):
        angle = np.pi / 2 * t / 4000
        x = rng.normal(size=2)
        label = int(np.cos(angle) * x[0] + np.sin(angle) * x[1] > 0)
        shares = model.predict_one(x.astype(np.float32))
        right.append(shares is not None and int(np.argmax(shares)) == label)
        model.learn_one(x.astype(np.float32), label)
    assert np.mean(right[-200:]) > 0.9


def test_without_the_regression_only_the_knn_votes() -> None:
    adapter = Adapter(2, ks=(5, 1), linear=False, trees=(), average=False)
    assert adapter.linear is None and LINEAR not in adapter.voters
    assert adapter.voters == adapter.knn.voters


def test_where_the_concept_is_a_few_thresholds_a_tree_answers_and_follows_a_new_one() -> None:
    """Class 1 when the first feature is inside a band, eight features of noise: the
    tree on the newest samples is right most often and answers; after an abrupt change
    to a band of another feature, it is refit on the newest samples and again right on
    nearly every new label within 250 labels, and answers again."""
    rng = np.random.default_rng(3)
    X = rng.uniform(0, 1, (2000, 9)).astype(np.float32)
    before = ((X[:1000, 0] > 0.3) & (X[:1000, 0] < 0.6)).astype(int)
    after = ((X[1000:, 4] > 0.2) & (X[1000:, 4] < 0.5)).astype(int)
    adapter = Adapter(2, window=1000, ks=(5,), spans=(), compare=100, trees=(200,), average=False)
    assert adapter.voters == ((None, 5), LINEAR, (200, TREE))
    tree = adapter.trees[0]
    rights = []
    for x, label in zip(X, np.concatenate([before, after]), strict=True):
        shares = tree.predict_one(x)
        rights.append(shares is not None and int(np.argmax(shares)) == label)
        adapter.learn(x, int(label), None, "a")
        if len(rights) == 1000:
            assert adapter.voter == (200, TREE) and adapter.k == TREE
            assert np.mean(rights[800:1000]) > 0.95
    assert np.mean(rights[1250:]) > 0.95
    assert adapter.voter == (200, TREE)
    batch = adapter.answer_many(X[:50])
    assert batch is not None
    assert [list(row) for row in batch] == [adapter.answer(x) for x in X[:50]]


def test_a_tree_splits_where_the_classes_part_and_leaves_pure_nodes_alone() -> None:
    tree = WindowTree(3, None, min_leaf=2)
    X = np.array([[0.0], [1.0], [2.0], [3.0], [4.0], [5.0]])
    tree.fit(X, np.array([0, 0, 1, 1, 2, 2]))
    assert [int(np.argmax(tree.predict_one(np.array([v])) or [])) for v in X[:, 0]] == [
        0,
        0,
        1,
        1,
        2,
        2,
    ]
    tree.fit(X, np.zeros(6, np.int64))  # one class: a single leaf
    assert tree.predict_one(np.array([9.0])) == [1.0, 0.0, 0.0]
    assert WindowTree(2, None).predict_one(np.zeros(1)) is None  # not fitted yet


def test_the_average_votes_with_the_mean_of_the_others_shares() -> None:
    """Where no single voter is right most often, the mean of their shares may be: it
    is one more voter, and its shares (one answer or a batch) are the others' mean."""
    adapter = Adapter(3, window=100, ks=(1,), spans=(), compare=50, trees=(30,))
    assert adapter.voters == ((None, 1), LINEAR, (30, TREE), AVERAGE)
    rng = np.random.default_rng(4)
    for _ in range(300):
        x = rng.normal(size=4).astype(np.float32)
        adapter.learn(x, int(x[0] > 0) + int(x[1] > 0), None, "a")
    probe = rng.normal(size=4).astype(np.float32)
    votes = adapter._votes(probe)
    assert votes is not None and len(votes) == 4
    assert np.allclose(votes[-1], np.mean(votes[:-1], axis=0))
    adapter.voter = AVERAGE
    assert adapter.answer(probe) == votes[-1]
    batch = adapter.answer_many(np.stack([probe, probe]))
    assert batch is not None and np.allclose(batch[1], votes[-1])
