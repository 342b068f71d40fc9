"""``edgeloop bench deltas``: the scenario, the measurements and the summary (the runs
themselves go through the trainer, which tests/cloud/export/test_budgeted.py covers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rich.console import Console

from cloud.benchmarks.deltas import (
    QUICK,
    Result,
    RunRow,
    Scenario,
    Stream,
    _measure,
    _sequence,
)
from cloud.benchmarks.families import FamilyResult, RoundRow, families_table
from cloud.cli.main import main


def test_the_sequence_never_feeds_held_out_rows_and_repeats_the_pool_when_needed():
    held, feed = _sequence(
        1000, Scenario(updates=20, per_update=72, upright_updates=2, eval_size=300)
    )
    assert len(feed) == 150 + 20 * 72 and not set(held) & set(feed)
    assert len(set(feed[:700])) == 700  # one full pass before anything repeats
    again_held, again_feed = _sequence(1000, Scenario(20, 72, 2, 300))
    assert np.array_equal(held, again_held) and np.array_equal(feed, again_feed)


def test_measurements_of_one_update(exported):
    base = exported.content
    target = bytearray(base)
    target[4000:4010] = bytes((b + 1) % 256 for b in target[4000:4010])
    row = RunRow(published=True, version=2, reason="")
    _measure(row, base, bytes(target))
    assert row.bytes_changed == 10 and 0 < row.delta_bytes < 200
    assert row.patch_from_bytes < row.full_bytes
    assert row.full_bytes < len(base)


def test_the_summary_compares_the_same_updates():
    rows = [
        RunRow(True, 2, "", delta_bytes=100, full_bytes=4000, acc_upright=0.95, acc_rotated=0.93),
        RunRow(False, None, "refused", acc_upright=0.95, acc_rotated=0.93),
    ]
    full = [
        RunRow(
            True, 2, "", full_bytes=4000, patch_from_bytes=3000, acc_upright=0.96, acc_rotated=0.93
        ),
        RunRow(
            True, 3, "", full_bytes=4000, patch_from_bytes=3000, acc_upright=0.96, acc_rotated=0.93
        ),
    ]
    s = Result(QUICK, [Stream(0, rows, full)]).summary()
    assert s["delta_bytes_total"] == 100 and s["full_bytes_total"] == 4000
    assert s["patch_from_bytes_total"] == 6000 and s["delta_ratio"] == 0.025
    assert s["acc_gap_points"] == 0.5 and s["goal_met"]
    perfect = [RunRow(True, 2, "", acc_upright=1.0, acc_rotated=1.0)] * 2
    assert not Result(QUICK, [Stream(0, rows, perfect)]).summary()["goal_met"]


def test_streams_add_their_bytes_and_average_their_final_accuracies():
    def row(acc: float, delta: int = 0, full: int = 0) -> RunRow:
        return RunRow(
            True, 2, "", delta_bytes=delta, full_bytes=full, acc_upright=acc, acc_rotated=acc
        )

    one = Stream(0, [row(0.90), row(0.94, 100, 4000)], [row(0.90), row(0.95)])
    two = Stream(1, [row(0.90), row(0.97, 300, 4000)], [row(0.90), row(0.96)])
    s = Result(QUICK, [one, two]).summary()
    assert s["streams"] == 2 and s["delta_bytes_total"] == 400 and s["full_bytes_total"] == 8000
    assert s["delta_ratio"] == 0.05
    assert s["acc_budgeted"] == 0.955 and s["acc_unconstrained"] == 0.955
    assert s["acc_gap_points"] == 0.0 and s["goal_met"]
    # one stream alone misses the accuracy goal; the other the bytes goal
    assert one.figures()["acc_gap_points"] == 1.0 and two.figures()["delta_ratio"] == 0.075


def test_bench_refuses_nonsense_arguments(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "deltas", "--updates", "0"])
    assert e.value.code == 2 and "at least 1" in capsys.readouterr().err


def test_bench_refuses_an_unknown_family(capsys):
    with pytest.raises(SystemExit) as e:
        main(["bench", "deltas", "--families", "digits,resnet"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "unknown family 'resnet'" in err and "cnn1d" in err


def test_family_figures_and_their_table():
    rows = [
        RoundRow("frozen", None, 9000, 5000, 200, 90, 70, True, 5100),
        RoundRow("recalibrated", "layout", 9000, 5000, 4000, 7000, None, True, 5100),
    ]
    res = FamilyResult("mlp", "classification", "accuracy", rows, 0.3, 0.9, 0.92)
    f = res.figures()
    assert f["full_bytes"] == 10_000 and f["patch_bytes"] == 4200 and f["delta_ratio"] == 0.42
    assert f["gap"] == 2.0 and f["gap_unit"] == "points" and f["recalibrated_for"] == ["layout"]
    reg = FamilyResult("regression_mlp", "regression", "mae", rows[:1], 9.0, 1.25, 1.0)
    assert reg.figures()["gap"] == 0.25 and reg.figures()["gap_unit"] == "target units"
    console = Console(width=200, record=True)
    console.print(families_table([res, reg]))
    text = console.export_text()
    assert "regression_mlp" in text and "42.0%" in text and "+2.00 pt" in text


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bench_deltas_quick_runs_a_family_end_to_end(capsys):
    assert main(["bench", "deltas", "--quick", "--no-trainer", "--families", "mlp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    (mlp,) = out["families"]
    # The CLI end to end: the patch rebuilds every child, and the figures are there. How
    # small a budgeted patch is, is test_family_deltas' business: a quick run's few
    # samples can leave the int8 file short of the agreement check, and that round
    # re-calibrates (a larger patch), as the trainer would.
    assert mlp["family"] == "mlp" and mlp["patch_exact"] and 0 < mlp["delta_ratio"] <= 1
    assert mlp["scales"]
