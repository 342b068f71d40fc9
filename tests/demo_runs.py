"""Whole quick demos (``edgeloop demo --quick --json``) for the tests that check them,
run side by side.

A quick demo is a tree of processes (a redis-server, a trainer, edges and their
sensor apps) that spends much of its run on its own clock: the phases before and
after the drift last as long as they last, and the trainer trains in bursts. On 2
cores two demos side by side take little longer than one, so ``make test`` starts
every demo its selected tests need when the first of those tests runs, two at a
time, and each test then waits for its own run. A test names its run with the
``demo_run`` mark: ``@pytest.mark.demo_run(NAME, prepare[, during])``, where
``prepare(cwd)`` writes what the run needs into ``cwd`` and returns the demo's extra
arguments, and ``during(proc, tmp)``, if given, acts on the running demo (a fault:
its work dir is under ``tmp``) before the run is waited for. Each run's stdout and
stderr are kept in its ``cwd`` (``DemoRuns.cwd``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

#: Demos running at once: two keep both cores busy without starving either's clock.
WORKERS = 2
#: One demo's longest run (its drift phase may wait up to 100 s more on a busy machine).
RUN_TIMEOUT_S = 580
#: The trainer's log lines a run that missed a criterion prints: its last rounds'.
MAX_ROUND_LINES = 60

Prepare = Callable[[Path], Sequence[str]]
During = Callable[[subprocess.Popen[bytes], Path], None]


def run_demo(cwd: Path, *args: str, during: During | None = None) -> dict[str, Any]:
    """``edgeloop demo --quick --json ARGS`` in ``cwd`` (its work dir under ``cwd/tmp``,
    its output in ``cwd/stdout`` and ``cwd/stderr``), ``during`` acting on it while it
    runs: its last line, parsed."""
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    out, err = cwd / "stdout", cwd / "stderr"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cloud.cli.main", "demo", "--quick", "--json", *args],
            stdout=stdout,
            stderr=stderr,
            cwd=cwd,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
        try:
            if during is not None:
                during(proc, tmp)
            proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.terminate()  # the demo stops everything it started
                proc.wait(timeout=60)
    assert proc.returncode == 0, err.read_text()[-4000:]
    line = out.read_text().strip().splitlines()[-1]
    print(line)  # the run's figures, for -rP and for a failure's report
    result: dict[str, Any] = json.loads(line)
    return result


def trainer_rounds(cwd: Path) -> str:
    """What the trainer logged of its rounds in the run kept under ``cwd/tmp``."""
    lines = [
        line.rstrip()
        for log in sorted((cwd / "tmp").glob("edgeloop-demo-*/trainer.log"))
        for line in log.read_text(errors="replace").splitlines()
        if " round " in line or "published v" in line or "gate: " in line
    ]
    return "\n".join(["the trainer's rounds:", *lines[-MAX_ROUND_LINES:]])


class DemoRuns:
    """The demos a session's tests asked for, started at once, ``WORKERS`` at a time."""

    def __init__(self, root: Path, runs: dict[str, tuple[Prepare, During | None]]) -> None:
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="demo")
        self._futures: dict[str, Future[dict[str, Any]]] = {}
        self._cwds: dict[str, Path] = {}
        for name, (prepare, during) in runs.items():
            cwd = root / name
            cwd.mkdir()
            self._cwds[name] = cwd
            self._futures[name] = self._pool.submit(run_demo, cwd, *prepare(cwd), during=during)

    def result(self, name: str) -> dict[str, Any]:
        """The run's figures; its failure (a non-zero exit, a timeout) raised here. A run
        that missed a done criterion kept its logs: its trainer's rounds are printed
        (the test's captured output, shown if it fails)."""
        result = self._futures[name].result()
        if result.get("done") is False:
            print(trainer_rounds(self._cwds[name]))
        return result

    def cwd(self, name: str) -> Path:
        """Where the run ran: its ``stdout``, ``stderr`` and ``tmp``."""
        return self._cwds[name]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def demo_runs_of(items: Sequence[Any]) -> dict[str, tuple[Prepare, During | None]]:
    """Every ``demo_run`` mark among the selected test items, in their order."""
    runs: dict[str, tuple[Prepare, During | None]] = {}
    for item in items:
        mark = item.get_closest_marker("demo_run")
        if mark is not None:
            name, prepare, *during = mark.args
            runs.setdefault(name, (prepare, during[0] if during else None))
    return runs
