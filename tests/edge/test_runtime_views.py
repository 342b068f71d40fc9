"""The serving path through the interpreter's own buffers (``shared.runtime._views_of``):
it answers as set_tensor / invoke / get_tensor do, never hands out memory the next
invoke overwrites, and gives way to the public API where the runtime has no native
interpreter to call."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from helpers import FLOAT_16_FEATURES, FLOAT_MODEL

from shared import runtime
from shared.runtime import TFLiteModel, interpreter_class


def bare_answers(content: bytes, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The interpreter's public API, one sample at a time."""
    interp = interpreter_class()[0](model_content=content, num_threads=1)
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]
    rows = []
    for x in samples:
        interp.set_tensor(i, x[None])
        interp.invoke()
        rows.append(interp.get_tensor(o)[0])
    return np.stack(rows)


def check_answers(model: TFLiteModel, content: bytes, n_features: int) -> None:
    rng = np.random.default_rng(5)
    xs = rng.integers(0, 17, (32, n_features)).astype(np.float32)
    want = bare_answers(content, xs)
    run = model.row_predictor()
    first = run(xs[0])
    got = [run(x) for x in xs]
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert first == got[0]  # an answer is not the buffer the next invoke writes
    for _ in range(3):  # the first batch of a size measures both ways; then one is kept
        batch = model.answers(xs)
        other = model.answers(xs[::-1].copy())
        np.testing.assert_allclose(batch, want, atol=1e-6)
        np.testing.assert_allclose(other, want[::-1], atol=1e-6)
    way = model.batch_ways[32]
    answers, total = way(xs)
    np.testing.assert_allclose(answers, want, atol=1e-6)
    assert total == pytest.approx(float(want.sum()), rel=1e-4)
    # The public-API paths of the model still work beside the buffers' one.
    np.testing.assert_allclose(model.predict_proba(xs[3]), want[3], atol=1e-6)
    model.warm_up()


@pytest.mark.parametrize("data", [FLOAT_16_FEATURES, FLOAT_MODEL], ids=["dense", "digits-cnn"])
def test_the_buffers_answer_as_the_public_api_does(data: object) -> None:
    content = data.read_bytes()  # type: ignore[attr-defined]
    model = TFLiteModel(content)
    assert model._views is not None  # both runtimes wrap a native interpreter
    check_answers(model, content, model.num_features)


def test_without_a_native_interpreter_the_public_api_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Both runtimes installed here have one; a runtime without it cannot be had for real.
    monkeypatch.setattr(runtime, "_views_of", lambda *args: None)
    content = FLOAT_16_FEATURES.read_bytes()
    model = TFLiteModel(content)
    assert model._views is None
    check_answers(model, content, model.num_features)


def test_an_interpreter_without_a_native_one_gets_no_views() -> None:
    assert runtime._views_of(object(), 0, 0) is None
