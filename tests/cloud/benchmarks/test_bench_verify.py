"""``edgeloop bench verify --quick``: runs end to end (a private redis-server, the fleet's
TUF repository and director order, the edge's half as a process) and prints its figures."""

from __future__ import annotations

import json

from cloud.cli.main import main


def test_bench_verify_quick_prints_the_figures(capsys):
    assert main(["bench", "verify", "--quick", "--json"]) == 0
    out = capsys.readouterr().out
    figures = json.loads(out.strip().splitlines()[-1])
    assert figures["runs"] == 5 and "apply time of an update" in out  # the table
    for encoding in ("full", "patch"):
        f = figures[encoding]
        assert f["verified_ms"] > f["baseline_ms"] > 0 and f["signed_ms"] > 0
        assert f["ratio"] == round(f["verified_ms"] / f["baseline_ms"], 2)
        assert f["tuf_director_ms"] == round(f["verified_ms"] - f["signed_ms"], 3)
        assert len(figures["ms"][f"verified_{encoding}"]) == 5
