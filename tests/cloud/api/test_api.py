"""The cloud REST API against a real registry: what it returns is what the registry holds,
unknown things are 404, malformed ones 422, impossible patches 409, and nothing is a 500."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.api.app import create_app
from cloud.api.settings import ApiSettings
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.versions import DirBlobStore, Registry
from shared.config import load_settings
from shared.delta import apply_patch
from shared.errors import ConfigError
from shared.keys import FleetKeys
from shared.messages import ProbeSet, SignedManifest
from shared.signing import Signer, Verifier
from tests.cloud.api_helpers import PEPPER, bearer, issue

FLEET = "test"  # tests/cloud/conftest.py


@pytest.fixture
def api_settings(fleet_client, published_fleet, signing_dir, redis_url) -> ApiSettings:
    return ApiSettings(
        fleet=FLEET,
        redis_url=redis_url,
        public_key=signing_dir / "signing.pub",
        blob_dir=published_fleet.blob_dir,
        token_pepper=PEPPER,
    )


@pytest.fixture
def api(api_settings, fleet_client):
    headers = bearer(issue(fleet_client, FLEET, "viewer"))
    with TestClient(
        create_app(api_settings), raise_server_exceptions=False, headers=headers
    ) as client:
        yield client


@pytest.fixture
def registry(fleet_client, published_fleet) -> Registry:
    return Registry(fleet_client, FleetKeys(FLEET), DirBlobStore(published_fleet.blob_dir))


def test_models_and_versions_are_what_the_registry_holds(api, registry, published_fleet):
    models = api.get("/v1/models").json()
    assert models["fleet"] == FLEET and [m["name"] for m in models["models"]] == ["digits"]
    digits = models["models"][0]
    assert digits["versions"] == 2 and digits["latest"]["version"] == 2
    assert digits["labels"] == {"latest": 2}
    listed = api.get("/v1/models/digits/versions").json()["versions"]
    for row, record in zip(listed, registry.versions("digits"), strict=True):
        assert row["sha256"] == record.sha256 and row["version"] == record.version
        assert row["parent_sha256"] == record.parent_sha256 and row["summary"] == record.summary
        assert row["labels"] == record.labels and row["metrics"] == record.metrics
    assert [r["sha256"] for r in listed] == published_fleet.shas
    assert [
        r["version"] for r in api.get("/v1/models/digits/versions?limit=1").json()["versions"]
    ] == [2]


@pytest.mark.parametrize("ref", ["2", "v2", "latest", "SHA", "SHA[:8]"])
def test_a_version_by_any_ref_is_its_signed_manifest(api, published_fleet, signing_dir, ref):
    sha = published_fleet.shas[1]
    ref = {"SHA": sha, "SHA[:8]": sha[:8]}.get(ref, ref)
    body = api.get(f"/v1/models/digits/versions/{ref}").json()
    assert body["signature_verified"] is True and body["version"]["sha256"] == sha
    signed = SignedManifest.model_validate(body["signed"])
    Verifier.from_file(signing_dir / "signing.pub").verify(
        signed.manifest_json.encode(), signed.signature
    )
    assert json.loads(signed.manifest_json) == body["manifest"]
    assert body["manifest"]["version"] == 2 and body["manifest"]["parent_version"] == 1


def test_the_explanation_is_the_manifests(api, registry):
    for ref in ("1", "2"):
        body = api.get(f"/v1/models/digits/versions/{ref}/explanation").json()
        manifest = registry.manifest("digits", ref)
        assert body["explanation"] == json.loads(manifest.explanation.model_dump_json())
        assert body["version"]["version"] == manifest.version and body["signature_verified"]


def test_a_patch_from_the_parent_rebuilds_the_target(api, registry, published_fleet):
    v1, v2 = published_fleet.shas
    r = api.get(f"/v1/models/digits/delta?base={v1}&target=latest")
    assert r.status_code == 200 and r.headers["content-type"] == "application/octet-stream"
    assert r.headers["x-edgeloop-target-sha256"] == v2
    base = registry.content_by_sha(v1)
    assert apply_patch(base, r.content, max_size=10**7) == registry.content_by_sha(v2)
    assert len(r.content) < len(base)


def test_no_patch_between_files_of_different_lengths_is_a_409(
    api, registry, signing_dir, published_fleet
):
    publisher = Publisher(registry, Signer.from_file(signing_dir / "signing.key"))
    probe = ProbeSet(inputs=[[0.0] * 64], expected=[[0.1] * 10])
    labels = [str(i) for i in range(10)]
    odd = b"not the same length" * 10
    publisher.publish(PublishRequest("digits", odd, 64, labels, probe, runtime="test"))
    r = api.get(f"/v1/models/digits/delta?base={published_fleet.shas[1]}&target=3")
    assert r.status_code == 409, r.text
    assert "no patch" in r.json()["detail"] and "length" in r.json()["detail"]
    r = api.get("/v1/models/digits/diff?a=2&b=3")  # v3 is not a TFLite file
    assert r.status_code == 409 and "not a valid TFLite file" in r.json()["detail"]


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/v1/models/nope/versions", 404, "no model 'nope'"),
        ("/v1/models/nope/versions/1", 404, "no model 'nope'"),
        ("/v1/models/digits/versions/9", 404, "no version 9"),
        ("/v1/models/digits/versions/stable/explanation", 404, "stable"),
        ("/v1/models/digits/versions/ffffffff", 404, "ffffffff"),
        ("/v1/models/digits/delta?base=" + "0" * 64 + "&target=2", 404, "not a version"),
        ("/v1/models/digits/versions/0", 422, "name a version by number"),
        ("/v1/models/digits/versions/v%40x", 422, "name a version by number"),
        ("/v1/models/-digits/versions", 422, "model name"),
        ("/v1/models/digits/delta?base=abc&target=2", 422, "full sha256"),
        ("/v1/models/digits/delta?target=2", 422, "base"),
        ("/v1/models/digits/diff?a=1&b=%20", 422, "'b'"),
        ("/v1/models/digits/versions?limit=0", 422, "limit"),
    ],
)
def test_unknown_is_404_and_malformed_is_422_with_a_message(api, path, status, words):
    r = api.get(path)
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail and "\n" not in detail


def test_a_sha256_prefix_of_two_versions_is_a_409(api, fleet_client):
    fleet_client.zadd(
        FleetKeys(FLEET).versions("digits"), {"abcdef" + "0" * 58: -2, "abcdef" + "1" * 58: -1}
    )
    r = api.get("/v1/models/digits/versions/abcdef")
    assert r.status_code == 409 and "matches 2 versions" in r.json()["detail"]


def test_diff_measures_both_versions_on_the_same_data(api, published_fleet):
    d = api.get("/v1/models/digits/diff?a=1&b=latest").json()
    assert d["a"]["version"]["version"] == 1 and d["b"]["version"]["version"] == 2
    a, b = d["a"]["metrics"], d["b"]["metrics"]
    assert a["recent"]["samples"] == b["recent"]["samples"] == d["recent_samples"] > 0
    assert b["recent"]["accuracy"] > a["recent"]["accuracy"]
    assert d["flips"]["fixed"] > d["flips"]["broken"] and d["b_descends_from_a"]
    assert 0 < d["weights"]["bytes_changed"] <= d["bytes_differing"]
    back = api.get("/v1/models/digits/diff?a=2&b=1").json()
    assert (back["flips"]["fixed"], back["flips"]["broken"]) == (
        d["flips"]["broken"],
        d["flips"]["fixed"],
    )
    assert not back["b_descends_from_a"]


def test_health_and_an_unreachable_registry(api, api_settings):
    assert api.get("/healthz").json() == {"status": "ok", "fleet": FLEET, "redis": "ok"}
    down = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), raise_server_exceptions=False, headers=api.headers) as client:
        r = client.get("/healthz")
        assert r.status_code == 503 and r.json()["status"] == "unavailable"
        r = client.get("/v1/models/digits/versions")
        assert r.status_code == 503 and "unavailable" in r.json()["detail"]


def test_the_openapi_schema_documents_every_route_with_examples(api):
    spec = api.get("/openapi.json").json()
    routes = {
        "/healthz",
        "/v1/models",
        "/v1/models/{model}/versions",
        "/v1/models/{model}/versions/{ref}",
        "/v1/models/{model}/versions/{ref}/explanation",
        "/v1/models/{model}/delta",
        "/v1/models/{model}/diff",
    }
    assert routes <= set(spec["paths"])
    delta = spec["paths"]["/v1/models/{model}/delta"]["get"]
    assert {"200", "404", "409", "422"} <= set(delta["responses"])
    assert "application/octet-stream" in delta["responses"]["200"]["content"]
    assert delta["responses"]["409"]["content"]["application/json"]["example"]["detail"]
    ref = next(
        p
        for p in spec["paths"]["/v1/models/{model}/versions/{ref}"]["get"]["parameters"]
        if p["name"] == "ref"
    )
    assert ref["schema"]["pattern"] and ref["schema"]["examples"] == ["3", "latest"]
    version = spec["components"]["schemas"]["VersionPublic"]["properties"]
    assert all(version[f].get("examples") for f in ("model", "version", "sha256", "trigger"))


def test_settings_refuse_to_start_without_a_public_key_outside_development(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="public_key is required"):
        load_settings(ApiSettings, None)
    monkeypatch.setenv("EDGELOOP_API_URL", "http://127.0.0.1:9")  # the CLI's variable: ignored
    config = tmp_path / "api.toml"
    config.write_text(
        f'public_key = "/k.pub"\nport = 9000\nfleet = "lab"\ntoken_pepper = "{PEPPER}"\n'
    )
    monkeypatch.setenv("EDGELOOP_API_PORT", "9001")
    s = load_settings(ApiSettings, config)
    assert (s.port, s.fleet, str(s.public_key)) == (9001, "lab", "/k.pub")
    dev = ApiSettings(mode="development")
    assert dev.public_key.name == "signing.pub" and "dev" in str(dev.blob_dir)


segment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=0, max_size=80)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(model=segment, ref=segment, base=segment, target=segment, which=st.integers(0, 4))
def test_no_input_is_a_server_error(api, model, ref, base, target, which):
    m, r = quote(model, safe="") or "x", quote(ref, safe="") or "x"
    path = [
        f"/v1/models/{m}/versions",
        f"/v1/models/{m}/versions/{r}",
        f"/v1/models/digits/versions/{r}/explanation",
        f"/v1/models/digits/delta?base={quote(base, safe='')}&target={quote(target, safe='')}",
        f"/v1/models/digits/diff?a={r}&b={quote(target, safe='')}",
    ][which]
    response = api.get(path)
    assert response.status_code in (200, 404, 405, 409, 422), (path, response.text)
    if response.status_code >= 400:
        assert isinstance(response.json()["detail"], str)


def test_arrays_in_responses_are_plain_numbers(api):
    e = api.get("/v1/models/digits/versions/2/explanation").json()["explanation"]
    assert np.isclose(sum(e["attribution"]["child_importance"]), 1.0, atol=1e-3)


def test_the_example_config_loads(monkeypatch):
    monkeypatch.setenv("EDGELOOP_API_TOKEN_PEPPER", PEPPER)  # a secret: never in the file
    root = Path(__file__).resolve().parents[3]
    s = load_settings(ApiSettings, root / "deploy" / "examples" / "api.toml")
    assert s.mode == "production" and s.public_key.name == "signing.pub"


def test_edgeloop_api_serves_and_its_check_passes(tmp_path, api_settings):
    config = tmp_path / "api.toml"
    config.write_text(
        f'fleet = "{FLEET}"\nredis_url = "{api_settings.redis_url}"\nblob_dir = "{api_settings.blob_dir}"\n'
        f'public_key = "{api_settings.public_key}"\nport = {_free_port()}\n'
        f'token_pepper = "{PEPPER}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELOOP_API_")}
    cmd = [sys.executable, "-m", "cloud.cli.main", "api", "--config", str(config)]
    check = subprocess.run([*cmd, "--check"], capture_output=True, text=True, env=env, timeout=30)
    assert check.returncode == 1 and "unhealthy" in check.stderr  # nothing listens yet
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            check = subprocess.run(
                [*cmd, "--check"], capture_output=True, text=True, env=env, timeout=30
            )
            if check.returncode == 0 or time.monotonic() > deadline or server.poll() is not None:
                break
            time.sleep(0.2)
        assert check.returncode == 0 and f"fleet {FLEET}, redis ok" in check.stdout, check.stderr
    finally:
        server.send_signal(signal.SIGTERM)
        _, err = server.communicate(timeout=30)
    assert server.returncode == 0 and b"Traceback" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
