"""Publishes every ``*.tflite`` in a directory, in name order, one every
``interval`` seconds: the cloud side of the hot-swap benchmark, in its own
process so that its work does not share the edge's interpreter lock. With
``--go-key`` it starts (imports, connects) first and publishes when told, so
that its start-up does not land in the measured window."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import redis


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("redis_url")
    p.add_argument("private_key", type=Path)
    p.add_argument("models", type=Path)
    p.add_argument("--interval", type=float, default=0.25)
    p.add_argument("--go-key", help="wait (BLPOP) for an item on this Redis list before publishing")
    args = p.parse_args()
    from bench.setup import Bench

    client = redis.Redis.from_url(args.redis_url)
    bench = Bench(args.models, None, args.redis_url, client, args.private_key, args.private_key)  # type: ignore[arg-type]
    if args.go_key:  # started and imported ahead of time, idle until the measurement
        while not client.blpop([args.go_key], timeout=1):  # short: the URL may set a socket timeout
            pass
    for path in sorted(args.models.glob("*.tflite")):
        version = bench.publish(path.read_bytes())
        print(f"published v{version} {path.name}", flush=True)
        time.sleep(args.interval)
    sys.exit(0)


if __name__ == "__main__":
    main()
