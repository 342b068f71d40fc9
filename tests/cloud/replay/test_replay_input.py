"""``edgeloop replay`` refuses bad input in one line, exit 2, before anything starts;
and the plan and the baselines keep the same books (no services: seconds)."""

from __future__ import annotations

import tempfile

import numpy as np
import pytest

from cloud.cli import main as cli
from cloud.demo import services
from cloud.replay.baselines import learners, run_baseline
from cloud.replay.figures import summary
from cloud.replay.plan import Plan
from cloud.replay.streams import load_stream, river_stream

pytestmark = pytest.mark.cloud


@pytest.fixture
def no_process(monkeypatch, tmp_path):
    """Fail the test if the replay spawns anything; work dirs go to tmp_path/tmp."""

    def spawn(self, name, argv, env=None):
        raise AssertionError(f"the replay started {name} on bad input")

    monkeypatch.setattr(services.ProcessGroup, "spawn", spawn)
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return work


def refused(capsys, no_process, *args: str, words: tuple[str, ...]) -> None:
    code = cli.main(["replay", "--json", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeloop replay: error: "), err
    for w in words:
        assert w in lines[0], (w, err)
    assert not list(no_process.iterdir()), "a work dir was left behind"


def write_csv(path, rows: int = 50, label: str = "kind", bad_at: int | None = None):
    rng = np.random.default_rng(0)
    lines = [f"a,b,{label}"]
    for r in range(rows):
        a = "oops" if r == bad_at else f"{rng.normal():.3f}"
        lines.append(f"{a},{rng.normal():.3f},{'cat' if r % 2 else 'dog'}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_csv_that_does_not_parse(tmp_path, no_process, capsys):
    path = write_csv(tmp_path / "s.csv", bad_at=7)
    refused(capsys, no_process, "--dataset", f"csv:{path}", words=("line 9", "not numeric"))


def test_a_missing_label_column(tmp_path, no_process, capsys):
    path = write_csv(tmp_path / "s.csv")
    refused(
        capsys, no_process, "--dataset", f"csv:{path}", "--label", "species", words=("'species'",)
    )


@pytest.mark.parametrize("share", ["0", "1.5", "-0.2"])
def test_a_label_share_outside_0_1(no_process, capsys, share):
    refused(capsys, no_process, "--dataset", "river:sea", "--label-share", share, words=("(0, 1]",))


def test_a_delay_longer_than_the_stream(tmp_path, no_process, capsys):
    path = write_csv(tmp_path / "s.csv", rows=60)
    refused(
        capsys,
        no_process,
        "--dataset",
        f"csv:{path}",
        "--seed-rows",
        "20",
        "--label-delay",
        "40",
        words=("--label-delay 40", "40 rows"),
    )


def test_an_unknown_river_stream(no_process, capsys):
    refused(capsys, no_process, "--dataset", "river:nile", words=("river:nile", "sea"))


def test_a_csv_replays_in_file_order_with_string_labels(tmp_path):
    stream = load_stream(f"csv:{write_csv(tmp_path / 's.csv')}", None, seed=0, quick=False)
    assert stream.labels == ["cat", "dog"]
    assert stream.y[:4].tolist() == [1, 0, 1, 0]  # dog, cat, ...: the file's order
    assert stream.drifts == []


def test_the_plan_is_deterministic_and_sends_what_it_says():
    a = Plan.of(rows=1000, seed_rows=100, label_share=0.3, label_delay=7, seed=4)
    b = Plan.of(rows=1000, seed_rows=100, label_share=0.3, label_delay=7, seed=4)
    assert a.labeled_rows() == b.labeled_rows()
    assert (
        a.labeled_rows()
        != Plan.of(rows=1000, seed_rows=100, label_share=0.3, label_delay=7, seed=5).labeled_rows()
    )
    assert 0.22 < len(a.labeled_rows()) / (a.streamed - 7) < 0.38
    sent = [s for s in range(a.streamed) if a.label_sent_after(100 + s) is not None]
    assert [s - 7 for s in sent] == a.labeled_rows()
    assert int(a.sends().sum()) == a.labels_sent == len(sent)


def test_a_baseline_learns_the_seed_rows_then_follows_the_plan():
    stream = river_stream("sea", seed=0, rows=600)
    plan = Plan.of(rows=600, seed_rows=100, label_share=0.5, label_delay=5, seed=0)
    run = run_baseline("logistic_regression", learners(2, 0)["logistic_regression"](), stream, plan)
    assert len(run.correct) == plan.streamed == 500
    assert run.labels_learned == plan.labels_sent
    assert run.correct.mean() > 0.8  # SEA is nearly linear; learnt, not guessed
    figures = summary(run.correct, drifts=[200], sends=plan.sends())
    assert figures["drifts"][0]["drift_row"] == 200
