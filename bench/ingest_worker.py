"""The trainer's ingest, alone in its own process: read, validate, dedup,
accept into the replay buffer, ack. Used by the feedback benchmark."""

from __future__ import annotations

import argparse
import signal

import redis

from cloud.data.ingest import FeedbackIngest, IngestOptions
from cloud.data.replay import DataOptions, TrainerData
from shared.keys import FleetKeys


def trainer_data(client: redis.Redis, fleet: str, model: str) -> TrainerData:
    """The trainer's data as this worker keeps it (the benchmark reads its statistics)."""
    return TrainerData(
        client, FleetKeys(fleet), DataOptions.flat(model, num_classes=10, num_features=64)
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("redis_url")
    p.add_argument("fleet")
    p.add_argument("model")
    args = p.parse_args()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    client = redis.Redis.from_url(args.redis_url)
    keys = FleetKeys(args.fleet)
    data = trainer_data(client, args.fleet, args.model)
    options = IngestOptions(model=args.model, consumer="bench-ingest", block_ms=100)
    ingest = FeedbackIngest(client, keys, data, options)
    ingest.ensure_group()
    while not stopping:
        ingest.poll()


if __name__ == "__main__":
    main()
