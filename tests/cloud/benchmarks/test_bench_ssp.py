"""``edgeloop bench ssp``: the whole quick run (slow: it spawns four workers) and the
table and JSON it prints."""

from __future__ import annotations

import json

import pytest

from cloud.benchmarks.ssp import QUICK_SLOWDOWNS, STALENESS, _table
from cloud.cli.main import main


@pytest.mark.slow
@pytest.mark.bench_run
@pytest.mark.timeout(300)
def test_the_quick_bench_prints_the_straggler_table_and_its_json(capsys):
    assert main(["bench", "ssp", "--quick", "--json"]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["cores"] >= 1 and figures["baseline"]["workers"] == 1
    cases = {(c["slowdown"], c["staleness"]): c for c in figures["cases"]}
    expected = {(x, "inf" if s is None else s) for x, _ in QUICK_SLOWDOWNS for s in STALENESS}
    assert set(cases) == expected
    for (_, s), c in cases.items():
        if s != "inf":
            assert c["max_gap"] <= s  # the bound held in every run
        assert 0 < c["final_accuracy"] <= 1
    # asynchronous: the fast workers never wait for the one slowed 4x
    unbounded = cases[4.0, "inf"]
    assert unbounded["first_worker_s"] < 0.6 * unbounded["last_worker_s"]
    assert "1 worker" in out and "cores" in out


def test_the_table_fits_a_terminal_and_says_what_never_reached_the_target(capsys):
    case = {
        "slowdown": 4.0,
        "staleness": "inf",
        "time_to_target_s": None,
        "time_to_target_ratio": None,
        "round_s": 6.09,
        "round_ratio": 1.61,
        "first_worker_s": 0.87,
        "last_worker_s": 6.07,
        "final_accuracy": 0.853,
        "accuracy_delta": -0.118,
        "max_gap": 77,
    }
    base = {"workers": 1, "time_to_target_s": 0.48, "round_s": 3.79, "final_accuracy": 0.971}
    config = {"workers": 4, "target": 0.9, "epochs": 8, "step_ms": 5.0, "repeats": 3}
    _table({"config": config, "cores": 2, "load_average_1m": 1.0, "baseline": base,
            "cases": [case]})  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 80
    row = next(line for line in lines if line.lstrip().startswith("4x")).split()
    assert row == ["4x", "inf", "-", "-", "6.09", "0.87", "6.07", "0.853", "-0.118", "77"]
