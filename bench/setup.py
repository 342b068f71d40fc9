"""What the benchmarks share: a private redis-server, a signing key, edges
configured against them, and versions published the way the trainer does."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import redis

from cloud.demo.services import ProcessGroup, start_redis
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from edge.settings import BUNDLED_BASELINE, EdgeSettings
from shared.keys import FleetKeys
from shared.messages import ProbeSet
from shared.runtime import TFLiteModel
from shared.signing import Signer, write_keypair

FLEET = "bench"
MODEL = "digits"


@dataclass
class Bench:
    workdir: Path
    group: ProcessGroup
    redis_url: str
    client: redis.Redis
    private_key: Path
    public_key: Path

    @property
    def keys(self) -> FleetKeys:
        return FleetKeys(FLEET)

    def publisher(self) -> Publisher:
        registry = Registry(self.client, self.keys, DirBlobStore(self.workdir / "blobs"))
        return Publisher(registry, Signer.from_file(self.private_key))

    def publish(self, content: bytes) -> int:
        """Publish ``content`` as the next version, with a probe set made in the edge runtime."""
        model = TFLiteModel(content)
        inputs = digits_inputs(16)
        probe = ProbeSet(
            inputs=inputs.tolist(), expected=model.predict_proba_batch(inputs).tolist()
        )
        request = PublishRequest(
            MODEL,
            content,
            num_features=64,
            labels=[str(i) for i in range(10)],
            probe=probe,
            runtime=model.runtime,
        )
        return self.publisher().publish(request).version

    def edge_settings(self, device: str, **overrides: Any) -> EdgeSettings:
        return EdgeSettings(
            device_id=device,
            fleet=FLEET,
            model=MODEL,
            redis_url=self.redis_url,
            public_key=self.public_key,
            state_dir=self.workdir / device,
            **overrides,
        )


def digits_inputs(n: int, seed: int = 0) -> npt.NDArray[np.float32]:
    from sklearn.datasets import load_digits

    X: npt.NDArray[np.float32] = load_digits().data.astype(np.float32)
    return X[np.random.default_rng(seed).choice(len(X), n, replace=False)]


def baseline_bytes() -> bytes:
    return Path(BUNDLED_BASELINE).read_bytes()


@contextmanager
def bench_env() -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="edgeloop-bench-") as tmp:
        workdir = Path(tmp)
        group = ProcessGroup(workdir)
        try:
            url = start_redis(group)
            private_key, public_key = write_keypair(workdir / "keys")
            client = redis.Redis.from_url(url)
            yield Bench(workdir, group, url, client, private_key, public_key)
            client.close()
        except BaseException:
            for child in group.children:
                print(f"--- {child.name} (last lines of its log)\n{child.tail()}", file=sys.stderr)
            raise
        finally:
            group.stop_all()
