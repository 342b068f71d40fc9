"""``edgeloop quarantine list|release`` against a live API server (uvicorn on a real port)."""

from __future__ import annotations

import json

import pytest

from cloud.api.app import create_app
from cloud.cli import main as cli
from tests.cloud.api.test_quarantine_api import FLEET, quarantine_pi_07
from tests.cloud.api_helpers import dev_api_settings, issue, seed_versions, serving


@pytest.fixture
def live(redis_client, redis_url, tmp_path, monkeypatch):
    seed_versions(redis_client, FLEET, tmp_path / "blobs")
    quarantine_pi_07(redis_client)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("EDGELOOP_TOKEN", issue(redis_client, FLEET, "viewer"))
    with serving(create_app(dev_api_settings(FLEET, redis_url, tmp_path))) as url:
        monkeypatch.setenv("EDGELOOP_API_URL", url)
        yield


def test_the_cli_lists_and_releases(live, redis_client, monkeypatch, capsys):
    assert cli.main(["quarantine", "list"]) == 0
    out = capsys.readouterr().out
    assert "pi-07" in out and "95%" in out
    assert cli.main(["quarantine", "release", "pi-07"]) == 5  # a viewer may not
    assert "admin" in capsys.readouterr().err
    monkeypatch.setenv("EDGELOOP_TOKEN", issue(redis_client, FLEET, "admin", "root"))
    assert cli.main(["quarantine", "release", "pi-07", "--model", "digits", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["requeued"] == 3
    assert cli.main(["quarantine", "release", "pi-07"]) == 4
    assert "not quarantined" in capsys.readouterr().err
    assert cli.main(["quarantine", "list"]) == 0
    assert "no device of fleet lab is quarantined" in capsys.readouterr().out
