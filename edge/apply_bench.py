"""How long an edge takes to apply an update, with and without verifying it.

``python -m edge.apply_bench ...`` is the edge's half of ``edgeloop bench verify``
(cloud/benchmarks/verify.py, which prepares a fleet in Redis and runs this as a process
of its own, as a device would be: the cloud never imports the edge). It applies version
``v2`` of a model, from nothing (the **full** file) and from ``v1`` (a **patch**), in
three ways, alternating runs so that every way shares the machine's background alike:

- ``verified``: the update consumer exactly as a device with ``tuf_root`` and director
  keys runs it (``UpdateConsumer.poll``): TUF refresh from a fresh metadata directory
  (root, timestamp, snapshot, targets: the most a refresh fetches), the director
  order read and verified, the target downloaded through ngclient (length and hashes),
  the manifest's signature, the model's size, sha256, ops and probe checked, the
  atomic install on disk and the swap;
- ``signed``: the same consumer without TUF or director (an edge before issue 11: the
  unsigned target, the signed manifest, the same checks, install and swap);
- ``baseline``: no verification at all: the bytes read from Redis, decoded (or the
  patch applied), the interpreter built and warmed, and the swap.

It prints one JSON object: per way and encoding, the median and each run's milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.connections import FleetMember, connect
from edge.director import DirectorGate
from edge.fallback import ServingChain
from edge.model_store import ModelStore
from edge.tuf_client import TufClient
from edge.updater import UpdateConsumer, UpdatePolicy
from shared import replies
from shared.codec import DEFAULT_MAX_SIZE, decode_full
from shared.delta import apply_patch
from shared.keys import FleetKeys
from shared.messages import SignedManifest
from shared.runtime import TFLiteModel
from shared.signing import Verifier

WAYS = ("verified", "signed", "baseline")
ENCODINGS = ("full", "patch")


class Fleet:
    """What the cloud prepared: the fleet, its two versions and the keys a device holds."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.redis_url, self.keys, self.model = args.redis_url, FleetKeys(args.fleet), args.model
        self.root = Path(args.tuf_root).read_bytes()
        self.verifier = Verifier.from_file(args.public_key)
        self.director = [Verifier.from_file(args.director_key)]
        self.v1, self.v2 = args.v1, args.v2
        self.client = connect(self.redis_url)
        self.v1_signed = SignedManifest.from_wire(
            replies.binary(self.client.get(self.keys.manifest(self.v1)))
        )
        self.v1_bytes = decode_full(replies.binary(self.client.get(self.keys.artifact(self.v1))))

    def member(self, device: str) -> FleetMember:
        return FleetMember(self.redis_url, self.keys, device, self.model)


def _preload(fleet: Fleet, store: ModelStore, chain: ServingChain) -> None:
    """Serve v1, installed as an update would have (what a patch applies to)."""
    store.install(fleet.v1_bytes, fleet.v1_signed, last_known_good=None)
    chain.swap(TFLiteModel(fleet.v1_bytes, version=1, name="v1"))


def _consumer_run(fleet: Fleet, way: str, encoding: str, work: Path, n: int) -> float:
    state = work / f"{way}-{encoding}-{n}"
    store, chain = ModelStore(state), ServingChain()
    if encoding == "patch":
        _preload(fleet, store, chain)
    verified = way == "verified"
    member = fleet.member(f"bench-{way}-{encoding}-{n}")
    tuf = (
        TufClient(
            member.connect(socket_timeout=30.0, retries=0), fleet.keys, state / "tuf", fleet.root
        )
        if verified
        else None
    )
    director = (
        DirectorGate(
            fleet.keys, fleet.model, member.device_id, fleet.director, state / "director.counter"
        )
        if verified
        else None
    )
    consumer = UpdateConsumer(
        member,
        UpdatePolicy(warmup_invokes=1),
        store=store,
        chain=chain,
        verifier=fleet.verifier,
        tuf=tuf,
        director=director,
    )
    try:
        started = time.perf_counter()
        consumer.poll()
        took = time.perf_counter() - started
    finally:
        consumer.stop()
    current = chain.current
    if current is None or current.sha256 != fleet.v2:
        raise RuntimeError(f"the {way} {encoding} run did not install v2: {consumer.last_error}")
    done = consumer.patches_applied if encoding == "patch" else consumer.full_downloads
    if done != 1:
        raise RuntimeError(f"the {way} {encoding} run did not arrive as a {encoding}")
    return took


def _baseline_run(fleet: Fleet, encoding: str, work: Path, n: int) -> float:
    chain = ServingChain()
    if encoding == "patch":
        chain.swap(TFLiteModel(fleet.v1_bytes, version=1, name="v1"))
    client = connect(fleet.redis_url)
    try:
        started = time.perf_counter()
        if encoding == "patch":
            blob = replies.binary(client.get(fleet.keys.patch(fleet.v1, fleet.v2)))
            data = apply_patch(fleet.v1_bytes, blob, DEFAULT_MAX_SIZE)
        else:
            data = decode_full(replies.binary(client.get(fleet.keys.artifact(fleet.v2))))
        model = TFLiteModel(data, version=2, name="v2")
        model.warm_up(1)
        chain.swap(model)
        took = time.perf_counter() - started
    finally:
        client.close()
    return took


def measure(fleet: Fleet, runs: int, work: Path) -> dict[str, Any]:
    """Each way and encoding ``runs`` times, interleaved; milliseconds."""
    ms: dict[str, list[float]] = {f"{w}_{e}": [] for w in WAYS for e in ENCODINGS}
    steps: list[tuple[str, Callable[[int], float]]] = []
    for encoding in ENCODINGS:
        for way in WAYS:
            if way == "baseline":
                steps.append((f"{way}_{encoding}", _bind_baseline(fleet, encoding, work)))
            else:
                steps.append((f"{way}_{encoding}", _bind_consumer(fleet, way, encoding, work)))
    for n in range(runs + 1):  # the first round warms caches and imports: not counted
        for name, step in steps:
            took = step(n) * 1000.0
            if n:
                ms[name].append(round(took, 3))
    return {
        "runs": runs,
        "median_ms": {k: round(statistics.median(v), 3) for k, v in ms.items()},
        "ms": ms,
    }


def _bind_consumer(fleet: Fleet, way: str, encoding: str, work: Path) -> Callable[[int], float]:
    return lambda n: _consumer_run(fleet, way, encoding, work, n)


def _bind_baseline(fleet: Fleet, encoding: str, work: Path) -> Callable[[int], float]:
    return lambda n: _baseline_run(fleet, encoding, work, n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge.apply_bench", description=__doc__)
    p.add_argument("--redis-url", required=True)
    p.add_argument("--fleet", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--tuf-root", required=True, help="the fleet's trusted root.json")
    p.add_argument("--public-key", required=True, help="the manifests' public key (PEM)")
    p.add_argument("--director-key", required=True, help="the director's public key (PEM)")
    p.add_argument("--v1", required=True, help="sha256 of the version a patch applies to")
    p.add_argument("--v2", required=True, help="sha256 of the version to apply")
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="edgeloop-apply-") as tmp:
        result = measure(Fleet(args), args.runs, Path(tmp))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
