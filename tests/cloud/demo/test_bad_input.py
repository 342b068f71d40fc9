"""``edgeloop demo`` refuses bad input in one line, exit 2, before anything starts:
no redis-server, trainer or edge is spawned, and no work dir is left behind."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from cloud.cli import main as cli
from cloud.demo import services
from tests.cloud.demo.user_workload import MODEL_PY, write_model, write_npz

pytestmark = pytest.mark.cloud

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def no_process(monkeypatch, tmp_path):
    """Fail the test if the demo spawns anything; demo work dirs go to tmp_path/tmp."""

    def spawn(self, name, argv, env=None):
        raise AssertionError(f"the demo started {name} on bad input")

    monkeypatch.setattr(services.ProcessGroup, "spawn", spawn)
    work = tmp_path / "tmp"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))
    return work


def windows(n: int = 80) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "X": rng.normal(size=(n, 8, 2)).astype(np.float32),
        "y": rng.integers(0, 3, n),
    }


def demo(capsys, *args: str) -> tuple[int, str]:
    code = cli.main(["demo", "--json", *args])
    err = capsys.readouterr().err.strip()
    return code, err


def assert_refused(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("edgeloop demo: error: "), err
    for w in words:
        assert w in lines[0], (w, err)


def test_a_model_file_that_does_not_import(tmp_path, no_process, capsys):
    model = write_model(tmp_path, "import not_a_module_anywhere\n\ndef build(info): ...\n")
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", f"{model}:build", "--dataset", f"npz:{data}")
    assert_refused(code, err, str(model), "not_a_module_anywhere")
    assert not list(no_process.iterdir())


def test_a_model_spec_naming_no_function(tmp_path, no_process, capsys):
    model = write_model(tmp_path)
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", f"{model}:make_it", "--dataset", f"npz:{data}")
    assert_refused(code, err, str(model), "make_it")


def test_a_function_that_does_not_return_a_module(tmp_path, no_process, capsys):
    model = write_model(tmp_path, "def build(info):\n    return [info.input_shape]\n")
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", f"{model}:build", "--dataset", f"npz:{data}")
    assert_refused(code, err, str(model), "torch.nn.Module", "list")


def test_a_module_whose_output_does_not_fit_the_task(tmp_path, no_process, capsys):
    five_outputs = "import torch\n\ndef build(info):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))\n"
    model = write_model(tmp_path, five_outputs)
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", f"{model}:build", "--dataset", f"npz:{data}")
    assert_refused(code, err, str(model), "[2, 5]", "expected [2, 3]", "3 classes")


def test_a_regression_module_with_the_wrong_number_of_outputs(tmp_path, no_process, capsys):
    two_outputs = "import torch\n\ndef build(info):\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))\n"
    model = write_model(tmp_path, two_outputs)
    arrays = windows()
    data = write_npz(tmp_path, X=arrays["X"], y=arrays["X"][:, 0, 0] * 2.5)
    code, err = demo(capsys, "--model", f"{model}:build", "--dataset", f"npz:{data}")
    assert_refused(code, err, "expected [2, 1]", "outputs")


def test_a_model_for_another_input_shape(tmp_path, no_process, capsys):
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", "digits", "--dataset", f"npz:{data}")
    assert_refused(code, err, "digits", "[8, 2]")


def test_an_npz_without_y(tmp_path, no_process, capsys):
    data = write_npz(tmp_path, X=windows()["X"])
    model = write_model(tmp_path)
    code, err = demo(capsys, "--model", f"{model}:build", "--dataset", f"npz:{data}")
    assert_refused(code, err, str(data), "no y", "X [N, *input_shape] and y [N]")


def test_an_npz_whose_X_does_not_match_its_declared_shape(tmp_path, no_process, capsys):
    data = write_npz(tmp_path, **windows(), input_shape=np.array([4, 4]))
    code, err = demo(capsys, "--dataset", f"npz:{data}")
    assert_refused(code, err, str(data), "[8, 2]", "[4, 4]")


def test_a_drift_concept_of_another_shape(tmp_path, no_process, capsys):
    a = windows()
    data = write_npz(tmp_path, **a, X_drift=np.zeros((10, 3, 3), np.float32), y_drift=a["y"][:10])
    code, err = demo(capsys, "--dataset", f"npz:{data}")
    assert_refused(code, err, str(data), "X_drift")


def test_labels_that_do_not_fit(tmp_path, no_process, capsys):
    data = write_npz(tmp_path, **windows(), labels=np.array(["ok", "worn"]))
    code, err = demo(capsys, "--dataset", f"npz:{data}")
    assert_refused(code, err, str(data), "class 2", "2 classes")


def test_regression_targets_for_a_classification_task(tmp_path, no_process, capsys):
    a = windows()
    data = write_npz(tmp_path, X=a["X"], y=a["X"][:, 0, 0] + 0.5)
    code, err = demo(capsys, "--dataset", f"npz:{data}", "--task", "classification")
    assert_refused(code, err, str(data))


def test_a_missing_dataset_file(tmp_path, no_process, capsys):
    code, err = demo(capsys, "--dataset", f"npz:{tmp_path / 'nowhere.npz'}")
    assert_refused(code, err, "nowhere.npz")


def test_an_unknown_zoo_name(tmp_path, no_process, capsys):
    data = write_npz(tmp_path, **windows())
    code, err = demo(capsys, "--model", "resnet50", "--dataset", f"npz:{data}")
    assert_refused(code, err, "resnet50", "zoo", "module:function")


def test_an_example_with_a_model_of_its_own(no_process, capsys):
    code, err = demo(capsys, "--example", "vibration", "--model", "mlp")
    assert_refused(code, err, "--example vibration", "--model")


def test_the_command_line_prints_one_line_and_exits_2(tmp_path):
    """Through the real entry point, as a user runs it (and without importing torch
    for a dataset error)."""
    data = write_npz(tmp_path, X=windows()["X"])
    model = write_model(tmp_path, MODEL_PY)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cloud.cli.main",
            "demo",
            "--quick",
            "--json",
            "--model",
            f"{model}:build",
            "--dataset",
            f"npz:{data}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"edgeloop demo: error: {data}: no y; expected arrays X [N, *input_shape] and y [N] "
        "(has: X)"
    ]


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--dataset", "digits"], ["attacks scenario runs on the digits"]),
        (["--example", "vibration"], ["attacks scenario runs on the digits"]),
        (["--edges", "1"], ["at least 2 edges"]),
    ],
)
def test_the_attacks_scenario_refuses_what_it_does_not_run(no_process, capsys, args, words):
    code, err = demo(capsys, "--scenario", "attacks", *args)
    assert_refused(code, err, *words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--dataset", "digits"], ["chaos scenario runs on the digits"]),
        (["--model", "mlp"], ["chaos scenario runs on the digits"]),
        (["--edges", "2"], ["at least 3 edges"]),
    ],
)
def test_the_chaos_scenario_refuses_what_it_does_not_run(no_process, capsys, args, words):
    code, err = demo(capsys, "--scenario", "chaos", *args)
    assert_refused(code, err, *words)


@pytest.mark.parametrize("scenario", ["chaos", "attacks", "bad-canary"])
def test_only_the_drift_scenario_runs_on_a_given_redis(no_process, capsys, scenario):
    code, err = demo(capsys, "--scenario", scenario, "--redis-url", "redis://127.0.0.1:6379/0")
    assert_refused(code, err, "--redis-url is for the drift scenario", scenario)


def test_a_given_redis_that_holds_the_demo_fleet_is_refused(
    no_process, capsys, redis_url, redis_client
):
    """An earlier run's fleet on the Redis given: refused before any process starts (the
    new run's figures would mix with the old run's versions and feedback)."""
    from cloud.demo.fleet import FLEET
    from shared.keys import FleetKeys

    redis_client.sadd(FleetKeys(FLEET).models, "digits")
    code, err = demo(capsys, "--quick", "--redis-url", redis_url)
    assert_refused(code, err, "already holds fleet 'demo'")
    assert not list(no_process.glob("edgeloop-demo*"))  # no work dir left behind
