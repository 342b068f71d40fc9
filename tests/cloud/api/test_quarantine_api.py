"""Quarantined devices in the fleet view, and their release over REST (the CLI's:
tests/cloud/cli/test_quarantine_cli.py; the trainer's side:
tests/cloud/trainer/test_poisoning.py)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.data.quarantine import Quarantine
from shared.keys import FleetKeys
from shared.messages import QuarantineRecord
from tests.cloud.api_helpers import bearer, dev_api_settings, issue, seed_versions

FLEET = "lab"


def quarantine_pi_07(redis_client) -> Quarantine:
    """pi-07 quarantined for digits, with 3 samples kept (2 that waited, 1 sent after)."""
    keys = FleetKeys(FLEET)
    q = Quarantine(redis_client, keys, "digits")
    record = QuarantineRecord(
        device_id="pi-07",
        model="digits",
        reason="labels disagree with the model on 95% of 200 samples",
        checked=200,
        disagreed=190,
        rate=0.95,
        fleet_rate=0.05,
        bound=0.3,
        p_value=1e-30,
    )
    redis_client.rpush(keys.pending("digits", "pi-07"), b"a", b"b")
    q.put(record)  # its waiting samples go aside with it
    redis_client.rpush(keys.quarantined("digits", "pi-07"), b"c")
    return q


@pytest.fixture
def world(redis_client, redis_url, tmp_path):
    seed_versions(redis_client, FLEET, tmp_path / "blobs")
    return dev_api_settings(FLEET, redis_url, tmp_path), quarantine_pi_07(redis_client)


def test_the_fleet_view_shows_a_quarantine_and_an_admin_releases_it(world, redis_client):
    settings, q = world
    with TestClient(create_app(settings), raise_server_exceptions=False) as api:
        viewer = bearer(issue(redis_client, FLEET, "viewer"))
        admin = bearer(issue(redis_client, FLEET, "admin"))
        shown = api.get("/v1/fleet", headers=viewer).json()["quarantined"]
        assert [(d["device_id"], d["model"], d["kept"], d["rate"]) for d in shown] == [
            ("pi-07", "digits", 3, 0.95)
        ]
        assert api.get("/v1/quarantine", headers=viewer).json()["devices"] == shown
        assert api.post("/v1/quarantine/pi-07/release", headers=viewer).status_code == 403
        assert api.post("/v1/quarantine/pi-07/release").status_code == 401
        bad = api.post("/v1/quarantine/pi-07/release", params={"model": "no/such"}, headers=admin)
        assert bad.status_code == 422
        r = api.post("/v1/quarantine/pi-07/release", headers=admin)
        assert r.status_code == 200
        assert r.json() == {"device_id": "pi-07", "models": ["digits"], "requeued": 3}
        assert api.get("/v1/fleet", headers=viewer).json()["quarantined"] == []
        again = api.post("/v1/quarantine/pi-07/release", headers=admin)
        assert again.status_code == 404 and "not quarantined" in again.json()["detail"]
    keys = FleetKeys(FLEET)
    assert redis_client.lrange(keys.pending("digits", "pi-07"), 0, -1) == [b"a", b"b", b"c"]
    assert redis_client.sismember(keys.pending_devices("digits"), "pi-07")
    assert q.members() == {}
