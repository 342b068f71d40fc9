"""``edgeloop bench verify``: what TUF and director verification add to an update's apply time.

A private redis-server holds a fleet as production runs it: a TUF repository made by the
key ceremony (``init_fleet``), two versions of the bundled digits model published into
it by the trainer's publisher (the second one a patch away from the first), and a signed
director order naming the second. The edge's half (``python -m edge.apply_bench``, run
as a process of its own: the cloud never imports the edge) then applies the second
version, as the full file and as a patch from the first, in three ways, interleaved:

- **verified**: the update consumer of a device with ``tuf_root`` and director keys:
  TUF refresh (root, timestamp, snapshot, targets, from a fresh metadata directory: the
  most a refresh fetches), the director order verified, the target through ngclient
  (length and hashes), the manifest's signature, size, sha256, ops and probe, the atomic
  install on disk and the swap;
- **signed**: the same consumer without TUF or director (the edge before issue 11);
- **baseline**: no verification: the bytes read from Redis, decoded or patched, the
  interpreter built and warmed, the swap.

It prints, per encoding, the medians, ``ratio`` = verified / baseline and
``tuf_director_ms`` = verified - signed (what TUF and the director alone add). With
``--json`` the last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import redis

import cloud
from shared.errors import ConfigError
from shared.redis_client import connect_redis

logger = logging.getLogger(__name__)

FLEET = "bench"
MODEL = "digits"
#: The digits baseline shipped with the edge package: a real int8 file, no training needed.
BASELINE = Path(cloud.__file__).resolve().parents[1] / "edge" / "baseline" / "digits.tflite"
QUICK_RUNS, RUNS = 5, 25
#: Padding after the flatbuffer (TFLite ignores it): two versions of one length, a patch apart.
PAD = 512


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help=f"{QUICK_RUNS} runs of each (else {RUNS})")
    p.add_argument("--runs", type=int, default=None, help="runs of each way and encoding")
    p.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")


def versions() -> tuple[bytes, bytes]:
    """Two distinct, valid model files of one length: the baseline with different padding."""
    try:
        base = BASELINE.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the bundled digits model {BASELINE}: {e}") from e
    v2_pad = bytearray(PAD)
    v2_pad[::64] = b"\x01" * len(v2_pad[::64])
    return base + b"\0" * PAD, base + bytes(v2_pad)


def prepare(client: redis.Redis, work: Path) -> dict[str, str]:
    """The fleet in Redis and the device's trust files in ``work``; the edge's arguments."""
    from cloud.registry.publisher import Publisher, PublishRequest
    from cloud.registry.tuf_keys import KeyDir, init_fleet
    from cloud.registry.tuf_repo import TufRepository, TufSigners
    from cloud.registry.versions import DirBlobStore, Registry
    from cloud.rollout.director import Director
    from shared.keys import FleetKeys
    from shared.messages import ProbeSet
    from shared.runtime import TFLiteModel
    from shared.signing import Signer, write_keypair

    keys = FleetKeys(FLEET)
    keydir = KeyDir(work / "tuf-keys")
    init_fleet(client, keys, keydir, root_keys=1, threshold=1)
    private, public = write_keypair(work / "keys")
    repo = TufRepository(
        client, keys, TufSigners(keydir.signer("targets"), keydir.signer("online"))
    )
    registry = Registry(client, keys, DirBlobStore(work / "blobs"))
    publisher = Publisher(registry, Signer.from_file(private), tuf=repo, release="direct")
    inputs = np.random.default_rng(0).uniform(0, 16, (8, 64)).astype(np.float32)
    shas: list[str] = []
    for content in versions():
        model = TFLiteModel(content)
        probe = ProbeSet(
            inputs=inputs.tolist(), expected=model.predict_proba_batch(inputs).tolist()
        )
        labels = [str(i) for i in range(10)]
        request = PublishRequest(MODEL, content, 64, labels, probe, runtime=model.runtime)
        published = publisher.publish(request)
        if shas and len(published.payloads) < 2:
            raise RuntimeError("the second version was published without a patch")
        shas.append(published.sha256)
    Director(client, keys, Signer.from_file(keydir.file("director"))).set(MODEL, fleet=shas[1])
    return {
        "--fleet": FLEET,
        "--model": MODEL,
        "--tuf-root": str(keydir.trusted_root),
        "--public-key": str(public),
        "--director-key": str(keydir.path / "director.pub"),
        "--v1": shas[0],
        "--v2": shas[1],
    }


def summarize(raw: dict[str, Any]) -> dict[str, Any]:
    """Per encoding: the medians, verified / baseline and what TUF and the director add."""
    med = raw["median_ms"]
    out: dict[str, Any] = {"runs": raw["runs"]}
    for encoding in ("full", "patch"):
        verified, signed = med[f"verified_{encoding}"], med[f"signed_{encoding}"]
        baseline = med[f"baseline_{encoding}"]
        out[encoding] = {
            "verified_ms": verified,
            "signed_ms": signed,
            "baseline_ms": baseline,
            "ratio": round(verified / baseline, 2) if baseline else None,
            "tuf_director_ms": round(verified - signed, 3),
        }
    out["ms"] = raw["ms"]
    return out


def measure(redis_url: str, work: Path, runs: int) -> dict[str, Any]:
    """Prepare the fleet on ``redis_url`` (an empty database), run the edge's half and
    return ``summarize``'s figures. RuntimeError naming the edge's last line if it fails."""
    client = connect_redis(redis_url)
    try:
        edge_args = prepare(client, work)
    finally:
        client.close()
    argv = [sys.executable, "-m", "edge.apply_bench", "--redis-url", redis_url]
    for flag, value in edge_args.items():
        argv += [flag, value]
    done = subprocess.run([*argv, "--runs", str(runs)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the edge's run failed: {tail}")
    return summarize(json.loads(done.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> int:
    from cloud.demo.services import ProcessGroup, start_redis

    runs = args.runs or (QUICK_RUNS if args.quick else RUNS)
    if runs < 1:
        raise ConfigError("--runs must be at least 1")
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-verify-") as tmp:
        group = ProcessGroup(Path(tmp))
        try:
            figures = measure(start_redis(group), Path(tmp), runs)
        except RuntimeError as e:
            print(f"edgeloop bench verify: {e}", file=sys.stderr)
            return 1
        finally:
            group.stop_all()
    _table(figures)
    if args.json:
        print(json.dumps(figures))
    return 0


def _table(figures: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"apply time of an update, median of {figures['runs']} runs (ms)")
    for column in ("encoding", "verified", "signed only", "baseline", "verified/baseline",
                   "TUF+director add"):  # fmt: skip
        t.add_column(column, justify="right" if column != "encoding" else "left")
    for encoding in ("full", "patch"):
        f = figures[encoding]
        t.add_row(
            encoding,
            f"{f['verified_ms']:.1f}",
            f"{f['signed_ms']:.1f}",
            f"{f['baseline_ms']:.1f}",
            f"{f['ratio']:.2f}x",
            f"{f['tuf_director_ms']:.1f}",
        )
    Console(stderr=False).print(t)
