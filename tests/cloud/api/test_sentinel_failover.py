"""The API on a Sentinel-managed pair whose primary is killed: a status write and
``GET /v1/fleet`` answer 2xx once the sentinels have promoted the replica, and a 503
that says why while they elect, never a 500. Run with ``-s`` for the figures
(docs/ARCHITECTURE.md, "A Sentinel-managed pair")."""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from pathlib import Path

from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.registry.fleet_counts import _APPLY
from shared.messages import EdgeStatus
from shared.redis_client import connect_redis
from tests.cloud.api_helpers import bearer, dev_api_settings, issue
from tests.redis_sentinel import RedisSentinelPair

FLEET = "lab"


def test_the_api_answers_through_a_failover(
    own_sentinel_pair: RedisSentinelPair, tmp_path: Path
) -> None:
    pair = own_sentinel_pair
    admin = connect_redis(pair.url, socket_timeout=2)
    device = bearer(issue(admin, FLEET, "device", "pi-01", device="pi-01"))
    viewer = bearer(issue(admin, FLEET, "viewer"))
    settings = dev_api_settings(FLEET, pair.url, tmp_path)
    status = EdgeStatus(device_id="pi-01", fleet=FLEET, model="digits", state="serving")

    def both(api: TestClient, n: int) -> tuple[int, int, str]:
        body = status.model_copy(update={"version": n}).model_dump()
        w = api.post("/v1/devices/pi-01/status", json=body, headers=device)
        r = api.get("/v1/fleet", headers=viewer)
        bad = next((x for x in (w, r) if x.status_code >= 300), None)
        return w.status_code, r.status_code, bad.text if bad is not None else ""

    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        assert both(api, 0)[:2] == (202, 200)
        primary = pair.primary()
        pair.kill(primary)
        killed_at = time.monotonic()
        codes: Counter[int] = Counter()
        unavailable: list[str] = []
        promoted_s = first_ok_s = None
        n = 0
        while first_ok_s is None or time.monotonic() - killed_at < first_ok_s + 0.5:
            assert time.monotonic() - killed_at < 30, f"no answer but {codes} in 30 s"
            n += 1
            w, r, text = both(api, n)
            codes.update((w, r))
            if promoted_s is None and pair.named_primary() not in (None, primary):
                promoted_s = time.monotonic() - killed_at
            if (w, r) == (202, 200):
                first_ok_s = first_ok_s or time.monotonic() - killed_at
            elif text:
                unavailable.append(text)
            time.sleep(0.05)
        summary = api.get("/v1/fleet", headers=viewer)
    print(
        f"\nprimary killed; the sentinels named the replica {promoted_s or 0:.1f} s later; "
        f"the first 202 and 200 {first_ok_s:.1f} s after the kill; replies: {dict(codes)}; "
        f"the 503s say: {' | '.join(sorted({t[:110] for t in unavailable}))}"
    )
    assert set(codes) <= {202, 200, 503}  # never a 500
    assert all("unavailable" in text for text in unavailable)
    assert summary.status_code == 200 and summary.json()["devices"] >= 1
    # The statuses written after the election ran the fleet-count script in their MULTI
    # on the promoted primary: the pipeline loaded it there (a script cache is the
    # server's own, not replicated).
    assert pair.primary() != primary
    with pair.node(pair.primary()) as node:
        assert node.script_exists(hashlib.sha1(_APPLY.encode()).hexdigest()) == [True]
    admin.close()
