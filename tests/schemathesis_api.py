"""``make schemathesis``: fuzz the REST API from its own OpenAPI schema; any 5xx fails.

Starts a private redis-server, seeds a fleet (three versions of ``digits``, two
real TFLite files and one that is not, devices on the first, a rollout in
progress, a pin), issues an admin token, serves the API with uvicorn on a free
port, and runs ``schemathesis run --checks not_a_server_error`` against
``/openapi.json`` with that token. The exit code is schemathesis'.

    python tests/schemathesis_api.py [--max-examples N] [-- extra schemathesis options]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLEET = "fuzz"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--max-examples", type=int, default=30, help="per operation and phase")
    p.add_argument("extra", nargs="*", help="more schemathesis options (after --)")
    args = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="edgeloop-fuzz-") as tmp:
        from cloud.demo.services import ProcessGroup, start_redis

        work = Path(tmp)
        group = ProcessGroup(work)
        try:
            redis_url = start_redis(group)
            token = _seed(redis_url, work)
            return _fuzz(redis_url, work, token, args)
        finally:
            group.stop_all()


def _seed(redis_url: str, work: Path) -> str:
    import numpy as np
    import redis

    from cloud.registry.publisher import Publisher, PublishRequest
    from cloud.registry.versions import DirBlobStore, Registry
    from cloud.rollout.controller import RolloutController
    from edge.settings import BUNDLED_BASELINE
    from shared.keys import FleetKeys
    from shared.messages import ProbeSet
    from shared.rollouts import RolloutSpec, StageSpec
    from shared.runtime import TFLiteModel
    from shared.signing import Signer, write_keypair
    from tests.cloud.api_helpers import issue, report

    client = redis.Redis.from_url(redis_url)
    keys = FleetKeys(FLEET)
    write_keypair(work / "keys")
    registry = Registry(client, keys, DirBlobStore(work / "blobs"))
    publisher = Publisher(
        registry, Signer.from_file(work / "keys" / "signing.key"), release="manual"
    )
    baseline = BUNDLED_BASELINE.read_bytes()
    inputs = np.zeros((2, 64), dtype=np.float32)
    probe = ProbeSet(
        inputs=inputs.tolist(), expected=TFLiteModel(baseline).predict_proba_batch(inputs).tolist()
    )
    labels = [str(i) for i in range(10)]
    shas = [
        publisher.publish(
            PublishRequest("digits", content, 64, labels, probe, runtime="ai-edge-litert")
        ).sha256
        for content in (baseline + b"\0", baseline + b"\1", b"not a model" * 100)
    ]
    client.set(keys.target("digits"), shas[0])
    for i in range(6):
        report(client, FLEET, f"pi-{i}", shas[0], version=1, rolling_accuracy=0.9)
    controller = RolloutController(client, keys, registry)
    rollout = controller.create(
        RolloutSpec(
            model="digits",
            target="2",
            stages=[StageSpec(name="canary", count=1), StageSpec(name="all", percent=100)],
        )
    )
    controller.pin("digits", "pi-5", "1", "seed")
    token = issue(client, FLEET, "admin", "fuzz-admin")
    issue(client, FLEET, "viewer", "fuzz-viewer")
    client.close()
    # Real identifiers, so that the fuzzer reaches past the 404s.
    (work / "schemathesis.toml").write_text(
        '[parameters]\n"path.model" = "digits"\n"path.device_id" = "pi-1"\n'
        f'"path.rollout_id" = "{rollout.id}"\n"path.name" = "fuzz-viewer"\n'
    )
    return token


def _fuzz(redis_url: str, work: Path, token: str, args: argparse.Namespace) -> int:
    from cloud.api.app import create_app
    from cloud.api.settings import ApiSettings
    from tests.cloud.api_helpers import PEPPER, serving

    settings = ApiSettings(
        fleet=FLEET,
        redis_url=redis_url,
        blob_dir=work / "blobs",
        public_key=work / "keys" / "signing.pub",
        token_pepper=PEPPER,
        controller_interval_s=1.0,
        log_level="WARNING",
    )
    exe = shutil.which(
        "schemathesis",
        path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    )
    if exe is None:
        raise SystemExit("schemathesis is not installed: pip install -e '.[dev]'")
    with serving(create_app(settings)) as base:
        cmd = [
            exe,
            "run",
            f"{base}/openapi.json",
            "--checks",
            "not_a_server_error",
            "-H",
            f"Authorization: Bearer {token}",
            "--max-examples",
            str(args.max_examples),
            "--request-timeout",
            "30",
            "--workers",
            "1",
            *args.extra,
        ]
        print(
            "$",
            " ".join(c if "Bearer" not in c else "Authorization: Bearer ***" for c in cmd),
            flush=True,
        )
        return subprocess.run(cmd, cwd=work).returncode


if __name__ == "__main__":
    sys.exit(main())
