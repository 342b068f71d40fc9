"""p99 in-process predict latency while 20 hot swaps happen vs steady state,
goal ≤ 1.5× and no failed request. The swaps go through the real update path
(signed announcement, verify, decode, load, warm, probe, install, swap), published
from another process."""

from __future__ import annotations

import threading
import time

import numpy as np

from bench.report import Result, at_most
from bench.setup import Bench, digits_inputs
from cloud.data.datasets import load_dataset
from cloud.demo.services import python_module
from cloud.export.exporter import quantize_static_int8, to_float_tflite
from cloud.learning.training import Hyperparameters, bootstrap
from edge.daemon import EdgeDaemon

SWAPS = 20
GO_KEY = "bench:swap:go"


def distinct_models(n: int) -> list[bytes]:
    """``n`` valid int8 files of one trained model: each calibrated on a different
    subset, so every file (and its sha256) differs while all answer alike."""
    ds = load_dataset("digits")
    model = bootstrap(ds, Hyperparameters(epochs=5, batch_size=64, lr=3e-3, seed=0)).model
    float_bytes = to_float_tflite(model, ds.num_features)
    rng = np.random.default_rng(0)
    return [
        quantize_static_int8(float_bytes, ds.X[rng.choice(len(ds.X), 150, replace=False)])
        for _ in range(n)
    ]


def _latencies(
    daemon: EdgeDaemon, xs: np.ndarray, stop: threading.Event, failures: list[str]
) -> list[float]:
    out: list[float] = []
    i = 0
    while not stop.is_set():
        x = xs[i % len(xs)]
        t0 = time.perf_counter()
        try:
            daemon.predict(x)
        except Exception as e:
            failures.append(repr(e))
        out.append(time.perf_counter() - t0)
        i += 1
    return out


def run(bench: Bench, quick: bool) -> Result:
    models = distinct_models(SWAPS + 1)
    bench.publish(models[0])
    models_dir = bench.workdir / "swap-models"
    models_dir.mkdir()
    for i, content in enumerate(models[1:]):
        (models_dir / f"{i:03d}.tflite").write_bytes(content)
    xs = digits_inputs(64)
    failures: list[str] = []
    steady_s = 3.0 if quick else 10.0
    with EdgeDaemon(bench.edge_settings("bench-swap")) as daemon:
        deadline = time.monotonic() + 30
        while daemon.health().version is None and time.monotonic() < deadline:
            time.sleep(0.05)
        swaps0 = daemon.health().counters.swaps
        # The publisher process starts (imports, connects) before the steady window and
        # waits on a Redis list, so both windows share the machine's background alike.
        publisher = bench.group.spawn(
            "swap-publisher",
            python_module(
                "bench.swap_publisher",
                bench.redis_url,
                str(bench.private_key),
                str(models_dir),
                "--go-key",
                GO_KEY,
            ),
        )
        time.sleep(3.0)  # its start-up, outside both windows

        stop = threading.Event()
        threading.Timer(steady_s, stop.set).start()
        steady = _latencies(daemon, xs, stop, failures)

        bench.client.rpush(GO_KEY, "go")
        stop = threading.Event()

        def until_swapped() -> None:
            # The updater's own counter, not health(): building a status every 10 ms
            # (percentiles over the request ring, pydantic models) would load only this
            # phase of the measurement and show up in its tail.
            end = time.monotonic() + 120
            while daemon.updater.swaps - swaps0 < SWAPS and time.monotonic() < end:
                time.sleep(0.01)
            stop.set()

        watcher = threading.Thread(target=until_swapped)
        watcher.start()
        t0 = time.monotonic()
        swapping = _latencies(daemon, xs, stop, failures)
        window = time.monotonic() - t0
        watcher.join()
        swaps = daemon.health().counters.swaps - swaps0
        refused = daemon.health().counters.updates_refused
        bench.group.stop(publisher)
    p99_steady = float(np.percentile(steady, 99)) * 1e6
    p99_swap = float(np.percentile(swapping, 99)) * 1e6
    result = at_most(
        "p99 predict during 20 hot swaps vs steady",
        p99_swap,
        p99_steady,
        "µs",
        1.5,
        swaps=swaps,
        refused=refused,
        failed_requests=len(failures),
        window_s=round(window, 2),
        predictions_during_swaps=len(swapping),
        max_during_swaps_us=round(max(swapping) * 1e6, 1),
    )
    result.met = result.met and not failures and swaps >= SWAPS
    return result
