"""Who may do what: every state-changing route of the app, taken from its route table,
tried with no token, a wrong one, and each role; every read needs a viewer (or admin)."""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.cli import main as cli
from cloud.data.quarantine import Quarantine
from cloud.registry.versions import DirBlobStore, Registry
from cloud.rollout.controller import RolloutController
from shared.config import load_settings
from shared.errors import ConfigError
from shared.keys import FleetKeys
from shared.messages import FeedbackEvent, QuarantineRecord
from shared.rollouts import GatePolicy, RolloutSpec, StageSpec
from tests.cloud.api_helpers import PEPPER, bearer, dev_api_settings, issue, report, seed_versions

FLEET = "lab"
DEVICES = ["pi-01", "pi-02", "pi-03", "pi-04"]
OPEN = {"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}


class World:
    """A fleet with versions, devices and tokens of every role, reset per route."""

    def __init__(self, client: redis.Redis, blob_dir: Path) -> None:
        self.client, self.blob_dir = client, blob_dir
        self.keys = FleetKeys(FLEET)
        self.reset()

    def reset(self) -> None:
        self.client.flushall()
        self.shas = seed_versions(self.client, FLEET, self.blob_dir)
        for d in DEVICES:
            report(self.client, FLEET, d, self.shas[0])
        self.tokens = {role: issue(self.client, FLEET, role) for role in ("admin", "viewer")}
        self.tokens["device"] = issue(self.client, FLEET, "device", "pi-01", device="pi-01")
        self.tokens["other-device"] = issue(self.client, FLEET, "device", "pi-02", device="pi-02")

    def controller(self) -> RolloutController:
        return RolloutController(
            self.client, self.keys, Registry(self.client, self.keys, DirBlobStore(self.blob_dir))
        )

    def quarantine(self, device: str) -> str:
        """``device`` quarantined for digits; the path that releases it."""
        record = QuarantineRecord(
            device_id=device,
            model="digits",
            reason="test",
            checked=200,
            disagreed=190,
            rate=0.95,
            fleet_rate=0.05,
            bound=0.3,
            p_value=1e-30,
        )
        Quarantine(self.client, self.keys, "digits").put(record)
        return f"/v1/quarantine/{device}/release"

    def rollout(self, paused: bool = False) -> str:
        spec = RolloutSpec(
            model="digits",
            target="2",
            gate=GatePolicy(min_dwell_s=3600),
            stages=[StageSpec(name="canary", count=1), StageSpec(name="all", percent=100)],
        )
        rid = self.controller().create(spec).id
        if paused:
            self.controller().pause(rid, "test")
        return rid


def _event(device: str) -> dict[str, Any]:
    return FeedbackEvent(
        event_id=f"{device}:e0:1",
        device_id=device,
        model="digits",
        x=[1.0],
        label=1,  # the seeded versions take one feature
    ).model_dump()


#: Every state-changing route: who may call it, and a request that succeeds for them.
Request = tuple[str, Any, dict[str, str] | None]
WRITES: dict[tuple[str, str], tuple[set[str], Callable[[World], Request]]] = {
    ("POST", "/v1/rollouts"): (
        {"admin"},
        lambda w: ("/v1/rollouts", {"model": "digits", "target": "2"}, None),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/pause"): (
        {"admin"},
        lambda w: (f"/v1/rollouts/{w.rollout()}/pause", None, None),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/resume"): (
        {"admin"},
        lambda w: (f"/v1/rollouts/{w.rollout(paused=True)}/resume", None, None),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/abort"): (
        {"admin"},
        lambda w: (f"/v1/rollouts/{w.rollout()}/abort", None, None),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/promote"): (
        {"admin"},
        lambda w: (f"/v1/rollouts/{w.rollout()}/promote", None, None),
    ),
    ("POST", "/v1/rollouts/{rollout_id}/rollback"): (
        {"admin"},
        lambda w: (f"/v1/rollouts/{w.rollout()}/rollback", None, None),
    ),
    ("PUT", "/v1/devices/{device_id}/pin"): (
        {"admin"},
        lambda w: ("/v1/devices/pi-03/pin", {"model": "digits", "version": "2"}, None),
    ),
    ("DELETE", "/v1/devices/{device_id}/pin"): (
        {"admin"},
        lambda w: (
            w.controller().pin("digits", "pi-03", "2", "t") and "/v1/devices/pi-03/pin",
            None,
            None,
        ),
    ),
    ("POST", "/v1/tokens"): (
        {"admin"},
        lambda w: ("/v1/tokens", {"name": "carol", "role": "viewer"}, None),
    ),
    ("POST", "/v1/quarantine/{device_id}/release"): (
        {"admin"},
        lambda w: (w.quarantine("pi-03"), None, None),
    ),
    ("DELETE", "/v1/tokens/{name}"): ({"admin"}, lambda w: ("/v1/tokens/viewer", None, None)),
    ("POST", "/v1/feedback"): (
        {"device", "admin"},
        lambda w: ("/v1/feedback", _event("pi-01"), None),
    ),
    ("POST", "/v1/models/{model}/feedback"): (
        {"device", "admin"},
        lambda w: ("/v1/models/digits/feedback", _event("pi-01"), None),
    ),
    ("POST", "/v1/devices/{device_id}/status"): (
        {"device", "admin"},
        lambda w: (
            "/v1/devices/pi-01/status",
            {"device_id": "pi-01", "fleet": FLEET, "model": "digits", "state": "serving"},
            None,
        ),
    ),
    # An edge's own entries and report with its signature (which the API carries, not checks).
    ("POST", "/v1/models/{model}/feedback/entries"): (
        {"device", "admin"},
        lambda w: (
            "/v1/models/digits/feedback/entries",
            {"entries": [{"payload": _b64(b"frames"), "device": "pi-01", "sig": _b64(bytes(64))}]},
            None,
        ),
    ),
    ("POST", "/v1/devices/{device_id}/status/signed"): (
        {"device", "admin"},
        lambda w: (
            "/v1/devices/pi-01/status/signed",
            {
                "payload": _b64(
                    b'{"device_id":"pi-01","fleet":"%s","model":"digits"}' % FLEET.encode()
                ),
                "device": "pi-01",
                "sig": _b64(bytes(64)),
            },
            None,
        ),
    ),
}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def world(redis_client, tmp_path) -> World:
    return World(redis_client, tmp_path / "blobs")


@pytest.fixture
def api(world, redis_url, tmp_path):
    settings = dev_api_settings(FLEET, redis_url, tmp_path)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


def _routes(api: TestClient) -> list[Any]:
    """Every route with methods, included routers flattened (newer FastAPI keeps them nested)."""
    try:
        from fastapi.routing import iter_route_contexts  # type: ignore[attr-defined]

        routes = [c.route for c in iter_route_contexts(api.app.routes)]
    except ImportError:
        routes = list(api.app.routes)
    return [r for r in routes if getattr(r, "methods", None)]


def test_the_table_names_every_state_changing_route(api):
    found = {(m, r.path) for r in _routes(api) for m in r.methods if m not in ("GET", "HEAD")}
    assert all(isinstance(r, APIRoute) for r in _routes(api) if r.path not in OPEN)
    assert found == set(WRITES), "a state-changing route without a role check in this test"


@pytest.mark.parametrize("route", sorted(WRITES), ids=lambda r: f"{r[0]} {r[1]}")
def test_only_the_right_role_may_change_state(api, world, route):
    method, _ = route
    allowed, prepare = WRITES[route]
    for who in ("none", "wrong", "malformed", "admin", "viewer", "device", "other-device"):
        world.reset()  # each try on a fresh state, so that only the role decides
        path, body, params = prepare(world)
        odd = {
            "none": {},
            "wrong": bearer("elt_" + secrets.token_urlsafe(32)),
            "malformed": {"Authorization": "Basic dXNlcjpwYXNz"},
        }
        headers = odd[who] if who in odd else bearer(world.tokens[who])
        r = api.request(method, path, json=body, params=params, headers=headers)
        if who in allowed:
            assert 200 <= r.status_code < 300, (who, r.text)
        elif who in ("none", "wrong", "malformed"):
            assert r.status_code == 401, (who, r.text)
            assert r.headers["www-authenticate"].startswith("Bearer")
        else:
            assert r.status_code == 403, (who, r.text)
        assert r.status_code < 300 or isinstance(r.json()["detail"], str)


def _read_url(path: str, world: World, rollout_id: str) -> str:
    values = {
        "model": "digits",
        "ref": "1",
        "device_id": "pi-01",
        "name": "viewer",
        "rollout_id": rollout_id,
    }
    fixed = {
        "/v1/tuf/{name}": "/v1/tuf/timestamp.json",
        "/v1/tuf/targets/{path:path}": f"/v1/tuf/targets/artifacts/{world.shas[0]}",
    }
    url = fixed.get(path) or re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], path)
    queries = {
        "/v1/models/{model}/delta": f"?base={world.shas[0]}&target=2",
        "/v1/models/{model}/diff": "?a=1&b=2",
    }
    return url + queries.get(path, "")


def test_every_read_needs_a_viewer_or_admin(api, world):
    reads = [r.path for r in _routes(api) if "GET" in r.methods and r.path not in OPEN]
    assert len(reads) >= 10
    rollout_id = world.rollout()
    for path in reads:
        url = _read_url(path, world, rollout_id)
        assert api.get(url).status_code == 401, path
        for who in ("device", "other-device"):
            r = api.get(url, headers=bearer(world.tokens[who]))
            # What an edge updates from: the signed TUF files for every device, the director's
            # orders for the token's own device (pi-01) only.
            own = path.startswith("/v1/tuf/") or (
                path.startswith("/v1/director/") and who == "device"
            )
            assert (r.status_code == 403) != own and r.status_code < 500, (path, who, r.text)
        for who in ("viewer", "admin"):
            r = api.get(url, headers=bearer(world.tokens[who]))
            # /v1/tokens is the admin's; the delta and diff of random bytes are refused (409)
            expected_forbidden = path.startswith("/v1/tokens") and who == "viewer"
            assert (r.status_code == 403) == expected_forbidden, (path, who, r.text)
            assert r.status_code < 500, (path, who, r.text)
    assert api.get("/healthz").status_code == 200
    assert api.get("/openapi.json").status_code == 200


def test_a_device_token_posts_for_its_own_device_only(api, world):
    device = bearer(world.tokens["device"])  # bound to pi-01
    r = api.post(
        "/v1/feedback", json={"events": [_event("pi-01"), _event("pi-02")]}, headers=device
    )
    assert r.status_code == 403 and "pi-01" in r.json()["detail"]
    assert world.client.xlen(world.keys.feedback_of("digits")) == 0  # nothing of the batch landed
    status = {"device_id": "pi-02", "fleet": FLEET, "model": "digits"}
    assert api.post("/v1/devices/pi-02/status", json=status, headers=device).status_code == 403
    # its own id in the path but another's in the body is refused too
    assert api.post("/v1/devices/pi-01/status", json=status, headers=device).status_code == 422
    spoofed = {**_event("pi-01"), "event_id": "pi-02:e0:7"}
    r = api.post("/v1/feedback", json=spoofed, headers=device)
    assert r.status_code == 422 and "idempotency" in r.json()["detail"]


def test_tokens_issued_and_revoked_with_the_cli(api, world, redis_url, tmp_path, capsys):
    config = tmp_path / "api.toml"
    config.write_text(
        f'mode = "development"\nfleet = "{FLEET}"\nredis_url = "{redis_url}"\n'
        f'token_pepper = "{PEPPER}"\n'
    )
    assert (
        cli.main(["token", "issue", "--role", "admin", "--name", "alice", "--config", str(config)])
        == 0
    )
    token = capsys.readouterr().out.strip()
    assert token.startswith("elt_") and len(token) > 40
    assert token.encode() not in b"".join(world.client.hvals(world.keys.tokens))  # stored hashed
    r = api.post("/v1/tokens", json={"name": "bob", "role": "viewer"}, headers=bearer(token))
    assert r.status_code == 201
    bob = r.json()["token"]
    assert api.get("/v1/fleet", headers=bearer(bob)).status_code == 200
    assert cli.main(["token", "list", "--config", str(config), "--json"]) == 0
    listed = capsys.readouterr().out
    assert '"bob"' in listed and bob not in listed and token not in listed
    assert cli.main(["token", "revoke", "bob", "--config", str(config)]) == 0
    r = api.get("/v1/fleet", headers=bearer(bob))
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    assert cli.main(["token", "revoke", "bob", "--config", str(config)]) == 4
    assert "no token named 'bob'" in capsys.readouterr().err
    assert (
        cli.main(["token", "issue", "--role", "device", "--name", "x", "--config", str(config)])
        == 2
    )
    assert "--device" in capsys.readouterr().err
    r = api.post("/v1/tokens", json={"name": "alice", "role": "viewer"}, headers=bearer(token))
    assert r.status_code == 409


def test_the_api_refuses_to_start_in_production_without_a_real_pepper(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.delenv("EDGELOOP_API_TOKEN_PEPPER", raising=False)
    config = tmp_path / "api.toml"
    config.write_text('public_key = "/k.pub"\n')
    with pytest.raises(ConfigError, match="token_pepper is required"):
        load_settings(ApiSettings, config)
    assert cli.main(["api", "--config", str(config)]) == 2
    assert "token_pepper is required" in capsys.readouterr().err
    for weak in ("changeme", "edgeloop-development-token-pepper", "short"):
        monkeypatch.setenv("EDGELOOP_API_TOKEN_PEPPER", weak)
        with pytest.raises(ConfigError, match="well-known or short"):
            load_settings(ApiSettings, config)
    monkeypatch.setenv("EDGELOOP_API_TOKEN_PEPPER", PEPPER)
    assert load_settings(ApiSettings, config).pepper == PEPPER.encode()
    monkeypatch.delenv("EDGELOOP_API_TOKEN_PEPPER")
    dev = ApiSettings(mode="development")  # a fixed, public pepper, and it says so
    assert dev.dev_pepper and dev.pepper
