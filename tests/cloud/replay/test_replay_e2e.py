"""A short stream with a known abrupt drift through the real loop (a redis-server, the
trainer and an edge as processes): the figures' books balance — every row is
predicted once, the labels sent are the plan's (share and delay), the trainer took
every one, and the baselines ran on the same rows with the same labels. The kept run
serves again offline (bench/adapter_rerun.py): its stored versions give the answers
the edge gave, row by row."""

from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bench.adapter_rerun import KeptRun, Variant
from cloud.replay.plan import ReplayOptions
from cloud.replay.runner import prepare_stream, run_replay

pytestmark = [pytest.mark.cloud, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_a_replay_keeps_its_books(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELOOP_EDGE_KEEP_VERSIONS", "1000")
    options = ReplayOptions(
        dataset="river:sea",
        rate=0,
        label_share=0.5,
        label_delay=10,
        seed_rows=200,
        quick=True,
        plot=tmp_path / "acc.png",
        keep=True,
    )
    stream, plan = prepare_stream(options)
    assert len(stream) == 2000 and stream.drifts == [1000]

    out = io.StringIO()
    result = run_replay(options, Console(file=out, width=400))
    kept = Path(re.findall(r"kept in (\S+)", out.getvalue())[-1])
    try:
        rerun_the_kept_run(kept)
        served = KeptRun(kept)
        later = served.version.max() > 1
    finally:
        shutil.rmtree(kept, ignore_errors=True)

    assert result["streamed_rows"] == plan.streamed == 1800
    assert result["predictions"] == 1800 and result["rows_predicted_once"]
    assert result["labels_as_planned"] and result["label_delays"] == [10]
    assert result["labels_sent"] == result["labels_planned"] == plan.labels_sent
    assert 0.4 < plan.labels_sent / (plan.streamed - 10) < 0.6
    assert result["feedback_lost"] == 0 and result["failed_requests"] == 0
    assert result["feedback_trained"] + result["feedback_deadlettered"] == plan.labels_sent
    assert result["versions_published"] >= 1 and result["bytes_downloaded"] > 0
    if later:  # an edge answered with a version trained on some of the labels
        assert result["time_to_serve_p50"] is not None
        assert result["labels_not_served_yet"] < result["labels_sent"]
    assert [d["drift_row"] for d in result["drifts"]] == [800]
    assert result["forgetting"]["rows"] == 500
    # forgetting against the same rows as they were served while streaming
    probe = np.unique(np.linspace(200, 999, 500).astype(np.intp)) - 200
    then = round(float(served.correct[probe].mean()), 4)
    assert result["forgetting"]["rows_accuracy_when_served"] == then
    assert result["forgetting"]["drop_on_the_rows"] == round(
        then - result["forgetting"]["accuracy_at_end"], 4
    )
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


def rerun_the_kept_run(kept: Path) -> None:
    run = KeptRun(kept)
    rows = np.flatnonzero((run.version >= 0) & ~run.adapted)
    assert len(rows) > 300  # rows the model answered (the adapter answers many of the others)
    again = [run.row_answer(int(run.version[s]), run.seed_rows + s) for s in rows]
    assert np.array_equal(np.array(again) == run.y[run.seed_rows + rows], run.correct[rows])
    never = run.serve(Variant("never", alpha=1e-12, keep_alpha=1e-12))
    assert never.adapted == 0 and never.switches == 0
