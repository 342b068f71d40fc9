"""Batches on a real runtime: ``TFLiteModel.answers`` picks, per batch size, a
resized interpreter or one invoke per sample (whichever it measured faster), and
``ServingChain.predict_batch`` answers each sample exactly as ``predict`` does.

The models are the cloud exporter's files (``tensor_models``): the MLP, whose file
can be resized to a batch, and the depthwise CNN over uint8 frames.
"""

from __future__ import annotations

import numpy as np
import pytest
from tensor_models import TensorModel

from edge.fallback import ServingChain
from shared.runtime import MAX_RESIZED, TFLiteModel

pytestmark = pytest.mark.slow


def chain_of(model: TFLiteModel) -> ServingChain:
    chain = ServingChain()
    chain.set_models(current=model, last_known_good=None, baseline=None)
    return chain


@pytest.mark.parametrize("fixture", ["tabular_model", "image_model"])
def test_a_batch_is_answered_as_each_sample_alone(
    fixture: str, request: pytest.FixtureRequest
) -> None:
    tm: TensorModel = request.getfixturevalue(fixture)
    model = TFLiteModel(tm.content, input=tm.input, task=tm.task)
    chain = chain_of(model)
    samples = np.ascontiguousarray(tm.X[:32], tm.input.np_dtype)
    for _ in range(2):  # the first batch of a size measures both ways, the second uses one
        batch = chain.predict_batch(samples)
        assert len(batch) == 32 and batch.answers.shape == (32, model.width)
        for x, p in zip(samples, batch, strict=True):
            alone = chain.predict(x.copy())
            assert p.label == alone.label
            np.testing.assert_allclose(p.probabilities, alone.probabilities, atol=1e-6)
    assert 32 in model._resized  # the choice is remembered for this size


def test_the_mlp_file_can_be_resized_and_batches_larger_than_the_limit_go_in_chunks(
    tabular_model: TensorModel,
) -> None:
    model = TFLiteModel(tabular_model.content, input=tabular_model.input, task=tabular_model.task)
    n = 2 * MAX_RESIZED + 5
    samples = np.ascontiguousarray(tabular_model.X[:n], np.float32)
    assert model._resized_for(8) is not None  # a batch invoke exists for the MLP
    want = np.stack([model.predict_proba(x) for x in samples])
    np.testing.assert_allclose(model.answers(samples), want, atol=1e-6)
    np.testing.assert_allclose(model.answers(samples[:7]), want[:7], atol=1e-6)


def test_batch_answers_join_feedback_by_request_id(tabular_model: TensorModel) -> None:
    model = TFLiteModel(tabular_model.content, input=tabular_model.input, task=tabular_model.task)
    chain = chain_of(model)
    samples = np.ascontiguousarray(tabular_model.X[:10], np.float32)
    batch = chain.predict_batch(samples)
    ids = [p.request_id for p in batch]
    assert len(set(ids)) == 10
    for i, p in enumerate(batch):
        recalled = chain.recall(p.request_id)
        assert recalled is not None
        np.testing.assert_array_equal(recalled.x, samples[i])
        assert recalled.predicted == p.label == batch[i].label
    assert chain.predictions == 10


def test_a_batch_given_as_lists_is_checked_whole(tabular_model: TensorModel) -> None:
    """Lists go through the full check (NaN is an InputError, numbering nothing); an
    array of the input's dtype is used as it is, like ``predict``'s."""
    from shared.errors import InputError

    model = TFLiteModel(tabular_model.content, input=tabular_model.input, task=tabular_model.task)
    chain = chain_of(model)
    rows = tabular_model.X[:4].astype(np.float32).tolist()
    rows[2][3] = float("nan")
    with pytest.raises(InputError, match="finite"):
        chain.predict_batch(rows)
    assert chain.predictions == 0
