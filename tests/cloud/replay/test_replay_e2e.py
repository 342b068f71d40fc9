"""A short stream with a known abrupt drift through the real loop (a redis-server, the
trainer and an edge as processes): the figures' books balance — every row is
predicted once, the labels sent are the plan's (share and delay), the trainer took
every one, and the baselines ran on the same rows with the same labels."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cloud.replay.plan import ReplayOptions
from cloud.replay.runner import prepare_stream, run_replay

pytestmark = [pytest.mark.cloud, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_a_replay_keeps_its_books(tmp_path):
    options = ReplayOptions(
        dataset="river:sea",
        rate=0,
        label_share=0.5,
        label_delay=10,
        seed_rows=200,
        quick=True,
        plot=tmp_path / "acc.png",
    )
    stream, plan = prepare_stream(options)
    assert len(stream) == 2000 and stream.drifts == [1000]

    result = run_replay(options, Console(file=io.StringIO()))

    assert result["streamed_rows"] == plan.streamed == 1800
    assert result["predictions"] == 1800 and result["rows_predicted_once"]
    assert result["labels_as_planned"] and result["label_delays"] == [10]
    assert result["labels_sent"] == result["labels_planned"] == plan.labels_sent
    assert 0.4 < plan.labels_sent / (plan.streamed - 10) < 0.6
    assert result["feedback_lost"] == 0 and result["failed_requests"] == 0
    assert result["feedback_trained"] + result["feedback_deadlettered"] == plan.labels_sent
    assert result["versions_published"] >= 1 and result["bytes_downloaded"] > 0
    assert [d["drift_row"] for d in result["drifts"]] == [800]
    assert result["forgetting"]["rows"] == 500
    # the baselines: the same rows in the same order, the same labels
    assert set(result["baselines"]) == {
        "arf",
        "hoeffding_adaptive_tree",
        "knn",
        "logistic_regression",
    }
    for details in result["baseline_details"].values():
        assert details["rows_predicted"] == result["streamed_rows"]
        assert details["labels_learned"] == result["labels_sent"]
        assert [d["drift_row"] for d in details["drifts"]] == [800]
    assert result["best_baseline"] == max(result["baselines"], key=result["baselines"].get)
    # an int8 model served from an edge has learnt the stream, not guessed it
    assert result["prequential_accuracy"] > 0.75
    assert (tmp_path / "acc.png").stat().st_size > 10_000
