"""The serving chain: each fallback trigger, the latency budget, input checks, swaps.

Invoke errors, slow invokes and non-finite outputs of a finite input cannot be
caused with a real model file, so ``Faulty`` wraps a real model and replaces
its invoke. Everything else uses real files.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from helpers import FLOAT_16_FEATURES, FLOAT_MODEL, baseline_bytes, digit_inputs, variant

from edge.fallback import ServingChain
from shared.errors import InputError, ModelRejected, Unavailable
from shared.runtime import FloatArray, TFLiteModel


class Faulty:
    """A real model whose invoke can be made to fail, stall or return NaN."""

    def __init__(self, model: TFLiteModel) -> None:
        self._model = model
        self.fault: str | None = None
        self.delay = 0.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def row_predictor(self) -> Callable[[FloatArray], FloatArray]:
        real = self._model.row_predictor()

        def run(x: FloatArray) -> FloatArray:
            if self.fault == "raise":
                raise RuntimeError("injected invoke failure")
            if self.delay:
                time.sleep(self.delay)
            out = real(x)
            return np.full_like(out, np.nan) if self.fault == "nan" else out

        return run


def model(n: int, version: int | None) -> TFLiteModel:
    return TFLiteModel(variant(n), version=version)


def chain_of(current: Any, lkg: Any = None, baseline: Any = None, **kwargs: Any) -> ServingChain:
    chain = ServingChain(**kwargs)
    chain.set_models(current=current, last_known_good=lkg, baseline=baseline)
    return chain


X = digit_inputs(1, seed=3)[0]


def test_the_current_model_answers() -> None:
    current = model(1, 7)
    chain = chain_of(current, model(2, 6), TFLiteModel(baseline_bytes()))
    p = chain.predict(X.copy())
    assert (p.model_version, p.model_sha256, p.fallback, p.fallback_reason) == (
        7,
        current.sha256,
        False,
        None,
    )
    assert p.label == int(np.argmax(current.predict_proba(X)))
    assert p.probabilities.shape == (10,) and abs(float(p.probabilities.sum()) - 1) < 1e-3
    assert p.latency_ms > 0
    assert chain.predict(X.copy()).request_id != p.request_id


def test_an_absent_current_model_falls_back_to_last_known_good() -> None:
    lkg = model(2, 6)
    chain = chain_of(None, lkg, TFLiteModel(baseline_bytes()))
    p = chain.predict(X.copy())
    assert (p.model_sha256, p.fallback, p.fallback_reason) == (lkg.sha256, True, "absent")
    assert chain.fallback_counts() == {"absent": 1}


def test_only_the_baseline_left_answers_when_nothing_else_loaded() -> None:
    chain = chain_of(None, None, TFLiteModel(baseline_bytes()))
    p = chain.predict(X.copy())
    assert p.model_version is None and p.fallback and p.fallback_reason == "absent"


@pytest.mark.parametrize("data", [baseline_bytes()[:20_000], b"\0" * 4096, b"not a model"])
def test_a_file_that_does_not_load_is_refused(data: bytes) -> None:
    with pytest.raises(ModelRejected):
        TFLiteModel(data)


def test_an_invoke_error_falls_back_and_is_counted() -> None:
    faulty = Faulty(model(1, 7))
    lkg = model(2, 6)
    chain = chain_of(faulty, lkg)
    faulty.fault = "raise"
    p = chain.predict(X.copy())
    assert (p.model_sha256, p.fallback_reason) == (lkg.sha256, "invoke_error")
    faulty.fault = None
    assert chain.predict(X.copy()).fallback is False
    assert chain.fallback_counts() == {"invoke_error": 1}


def test_a_non_finite_output_falls_back() -> None:
    faulty = Faulty(model(1, 7))
    faulty.fault = "nan"
    chain = chain_of(faulty, model(2, 6), TFLiteModel(baseline_bytes()))
    p = chain.predict(X.copy())
    assert p.fallback_reason == "not_finite" and p.model_version == 6
    assert np.isfinite(p.probabilities).all()


def test_a_non_finite_input_is_an_input_error_not_a_fallback() -> None:
    # A float model propagates NaN to its output; the chain then blames the input.
    chain = chain_of(TFLiteModel(FLOAT_MODEL.read_bytes(), version=1), model(2, 6))
    x = X.copy()
    x[5] = np.nan
    with pytest.raises(InputError, match="finite"):
        chain.predict(x)
    assert chain.fallback_counts() == {}


def test_a_slow_model_is_skipped_for_the_budget_and_probed_back() -> None:
    slow = Faulty(model(1, 7))
    lkg = model(2, 6)
    chain = chain_of(slow, lkg, budget_ms=5.0, probe_every=4)
    slow.delay = 0.02
    first = chain.predict(X.copy())
    assert first.model_version == 7 and first.latency_ms >= 20  # late, but answered
    # The moving estimate crosses the budget within a request or two.
    answers = [chain.predict(X.copy()) for _ in range(2)]
    assert (answers[-1].model_version, answers[-1].fallback_reason) == (6, "latency_budget")
    # A request with a bigger budget may still use the slow model.
    assert chain.predict(X.copy(), budget_ms=1000).model_version == 7
    slow.delay = 0.0
    # Within probe_every requests the model is re-measured, comes back and stays.
    versions = [chain.predict(X.copy()).model_version for _ in range(5)]
    assert versions[0] == 6 and versions[-2:] == [7, 7]
    assert chain.fallback_counts()["latency_budget"] >= 2


def test_the_last_link_answers_even_over_budget() -> None:
    slow = Faulty(model(1, 7))
    slow.delay = 0.01
    chain = chain_of(slow, budget_ms=1.0)
    assert [chain.predict(X.copy()).model_version for _ in range(3)] == [7, 7, 7]


def test_when_every_link_fails_the_request_fails_with_a_named_error() -> None:
    a, b = Faulty(model(1, 7)), Faulty(model(2, 6))
    a.fault = b.fault = "raise"
    chain = chain_of(a, b)
    with pytest.raises(Unavailable, match="no model could answer"):
        chain.predict(X.copy())
    assert chain.failed_requests == 1


def test_without_any_model_predict_is_unavailable() -> None:
    with pytest.raises(Unavailable, match="no model is loaded"):
        chain_of(None).predict(X.copy())


def test_inputs_are_converted_or_refused_with_a_message() -> None:
    chain = chain_of(model(1, 7))
    expected = chain.predict(X.copy()).label
    assert chain.predict(X.tolist()).label == expected
    assert chain.predict(X.astype(np.float64)).label == expected
    assert chain.predict(X.reshape(1, 64).copy()).label == expected
    bad_inputs = (X[:63].copy(), X.reshape(8, 8).copy(), ["a"] * 64, [], np.float32(3.0))
    for bad in bad_inputs:  # 8x8 holds 64 numbers but is not the model's input shape
        with pytest.raises(InputError, match=r"\[64\]|numbers"):
            chain.predict(bad)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="predict_batch"):
        chain.predict(np.stack([X, X]))
    assert chain.predictions == 4  # refused inputs are not counted


def test_a_baseline_of_another_shape_is_left_out_of_the_chain() -> None:
    baseline = TFLiteModel(FLOAT_16_FEATURES.read_bytes())
    current = model(1, 7)
    assert chain_of(current, None, baseline).serving == [current]
    alone = chain_of(None, None, baseline)
    assert alone.serving == [baseline] and alone.num_features == 16


def test_swap_demotes_the_current_model_to_last_known_good() -> None:
    a, b = model(1, 1), model(2, 2)
    chain = chain_of(a, None, TFLiteModel(baseline_bytes()))
    chain.swap(b)
    assert (chain.current, chain.last_known_good) == (b, a)
    assert chain.predict(X.copy()).model_version == 2
    chain.swap(TFLiteModel(variant(2), version=2))  # the same file again: a stays behind it
    assert chain.last_known_good is a
    assert [m.version for m in chain.serving] == [2, 1, None]


def test_a_swap_into_an_empty_current_keeps_the_last_known_good() -> None:
    lkg = model(2, 6)
    chain = chain_of(None, lkg)
    chain.swap(model(3, 8))
    assert chain.last_known_good is lkg and chain.predict(X.copy()).fallback is False


def test_recent_predictions_are_recalled_until_they_expire() -> None:
    chain = chain_of(model(1, 7), recent=4)
    first = chain.predict(X.copy())
    got = chain.recall(first.request_id)
    assert got is not None
    assert np.array_equal(got.x, X) and got.predicted == first.label and got.model_version == 7
    assert got.num_classes == 10 and got.fallback is False
    for _ in range(4):
        chain.predict(X.copy())
    assert chain.recall(first.request_id) is None
    row = chain.predict(X.reshape(1, 64).copy())
    recalled = chain.recall(row.request_id)
    assert recalled is not None and recalled.x.shape == (64,)
    latest = chain.predict(X.copy()).request_id
    prefix, _, number = latest.rpartition("-")
    for bogus in ("", "nope", first.request_id + "x", "00000000-1", f"{prefix}-0{number}"):
        assert chain.recall(bogus) is None


def test_request_ids_do_not_join_across_chains() -> None:
    a, b = chain_of(model(1, 7)), chain_of(model(1, 7))
    p = a.predict(X.copy())
    assert b.recall(p.request_id) is None


def test_latency_percentiles_cover_recent_predictions() -> None:
    chain = chain_of(model(1, 7), recent=16)
    assert chain.latency_percentiles() == (None, None)
    answers = [chain.predict(X.copy()) for _ in range(20)]
    p50, p99 = chain.latency_percentiles()
    assert p50 is not None and p99 is not None and 0 < p50 <= p99
    recent = sorted(p.latency_ms for p in answers[-16:])
    assert recent[0] <= p50 <= recent[-1] and p99 <= recent[-1]


@pytest.mark.parametrize("data", [FLOAT_16_FEATURES, FLOAT_MODEL], ids=["dense", "digits-cnn"])
def test_a_batch_gets_each_samples_own_answer_and_request_id(data: Any) -> None:
    """Resized or looped (whichever the model found faster), a batch answers as single
    predictions do, one request id per sample; a wrong shape names the input."""
    model = TFLiteModel(data.read_bytes(), version=1)
    chain = chain_of(model)
    rng = np.random.default_rng(3)
    for n in (1, 5, 32, 32):  # the second batch of 32 takes the way the first chose
        batch = rng.integers(0, 17, (n, model.num_features)).astype(np.float32)
        got = chain.predict_batch(batch)
        want = [chain.predict(x) for x in batch]
        assert [p.label for p in got] == [p.label for p in want]
        assert np.allclose(
            [p.probabilities for p in got], [p.probabilities for p in want], atol=1e-6
        )
        assert len({p.request_id for p in got}) == n and not any(p.fallback for p in got)
    assert 32 in model._resized  # decided once
    with pytest.raises(InputError, match=rf"\[{model.num_features}\]"):
        chain.predict_batch(np.zeros((2, model.num_features + 1), np.float32))


def test_batches_and_single_predictions_from_several_threads_never_share_a_request_id() -> None:
    chain = chain_of(model(1, 7), recent=100_000)
    batch = digit_inputs(8, seed=4)
    ids: list[list[str]] = [[], []]

    def singles() -> None:
        for _ in range(400):
            ids[0].append(chain.predict(X.copy()).request_id)

    def batches() -> None:
        for _ in range(50):
            got = chain.predict_batch(batch)
            ids[1].extend(p.request_id for p in got)
            recalled = [chain.recall(p.request_id) for p in got]
            assert all(r is not None for r in recalled)
            assert np.array_equal(np.stack([r.x for r in recalled if r is not None]), batch)

    threads = [threading.Thread(target=singles), threading.Thread(target=batches)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    everything = ids[0] + ids[1]
    assert len(everything) == 800 and len(set(everything)) == 800


def test_a_batch_is_one_request_whose_samples_ids_name_it() -> None:
    chain = chain_of(TFLiteModel(FLOAT_16_FEATURES.read_bytes(), version=1))
    batch = np.random.default_rng(6).integers(0, 17, (4, 16)).astype(np.float32)
    for _ in range(2):  # the second batch of the size takes the way the first chose
        got = chain.predict_batch(batch)
        request = got[0].request_id.rpartition(".")[0]
        assert [p.request_id for p in got] == [f"{request}.{k}" for k in range(4)]
        recalled = chain.recall(got[2].request_id)
        assert recalled is not None and np.array_equal(recalled.x, batch[2])
        assert recalled.predicted == got[2].label
        for bogus in (request, f"{request}.4", f"{request}.-1", f"{request}.02", f"{request}."):
            assert chain.recall(bogus) is None
    assert chain.predictions == 8  # every sample counts as a request


def test_a_non_finite_batch_is_an_input_error_on_the_fast_path_too() -> None:
    chain = chain_of(TFLiteModel(FLOAT_MODEL.read_bytes(), version=1), model(2, 6))
    batch = digit_inputs(8, seed=7)
    chain.predict_batch(batch)
    chain.predict_batch(batch)
    assert 8 in chain._plan.head.batch_ways  # type: ignore[union-attr]  # the fast path's
    before = chain.predictions
    bad = batch.copy()
    bad[3, 5] = np.nan
    with pytest.raises(InputError, match="finite"):
        chain.predict_batch(bad)
    assert chain.predictions == before and chain.fallback_counts() == {}
