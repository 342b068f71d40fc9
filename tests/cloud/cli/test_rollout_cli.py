"""``edgeloop rollout|fleet|devices`` against a live API server (uvicorn on a real port):
tables, --json, watch, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from cloud.api.app import create_app
from cloud.cli import main as cli
from cloud.cli.client import ApiClient
from shared.messages import ModelServing
from tests.cloud.api_helpers import dev_api_settings, issue, report, seed_versions, serving

FLEET = "lab"
DEVICES = [f"pi-{i}" for i in range(4)]


@pytest.fixture
def live(redis_client, redis_url, tmp_path, monkeypatch):
    shas = seed_versions(redis_client, FLEET, tmp_path / "blobs")
    for d in DEVICES:
        report(redis_client, FLEET, d, shas[0], version=1, rolling_accuracy=0.9)
    settings = dev_api_settings(FLEET, redis_url, tmp_path, controller_interval_s=0.1)
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.setenv("EDGELOOP_TOKEN", issue(redis_client, FLEET, "admin"))
    with serving(create_app(settings)) as url:
        monkeypatch.setenv("EDGELOOP_API_URL", url)
        yield shas


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.redis_cluster
def test_start_status_steer_and_watch_a_rollout(live, capsys):
    code, out, _ = run(
        capsys,
        "rollout",
        "start",
        "digits",
        "2",
        "--canary",
        "1",
        "--manual",
        "--min-dwell",
        "3600",
        "--json",
    )
    assert code == 0
    r = json.loads(out)
    rid = r["id"]
    assert [s["name"] for s in r["stages"]] == ["canary", "half", "all"]
    assert len(r["stages"][0]["devices"]) == 1 and r["auto_promote"] is False
    assert r["gate"]["min_dwell_s"] == 3600

    code, out, _ = run(capsys, "rollout", "status")
    assert code == 0 and rid in out and "v1 → v2" in out and "running" in out
    code, out, _ = run(capsys, "rollout", "status", rid)
    assert code == 0 and "Stages" in out and "canary" in out and "devices: 4 in rings" in out
    code, _, err = run(capsys, "rollout", "start", "digits", "3")
    assert code == 2 and f"rollout {rid} of digits is in progress" in err

    assert run(capsys, "rollout", "pause", rid)[0] == 0
    code, _, err = run(capsys, "rollout", "pause", rid)
    assert code == 2 and "cannot pause" in err and "(HTTP 409)" in err and err.count("\n") == 1
    assert run(capsys, "rollout", "resume", rid)[0] == 0

    def act(action: str, rollout_id: str) -> None:  # an operator elsewhere (prints nothing here)
        ApiClient(os.environ["EDGELOOP_API_URL"], token=os.environ["EDGELOOP_TOKEN"]).request(
            "POST", f"/v1/rollouts/{{}}/{action}", rollout_id
        )

    def operator() -> None:  # promotes by hand while `watch` follows
        for _ in range(3):
            time.sleep(0.4)
            act("promote", rid)

    t = threading.Thread(target=operator)
    t.start()
    code, out, _ = run(capsys, "rollout", "watch", rid, "--interval", "0.1", "--timeout", "30")
    t.join()
    assert code == 0 and "completed" in out and "all" in out

    code, out, _ = run(
        capsys, "rollout", "start", "digits", "3", "--stages", "c=1,all=100%", "--json"
    )
    rid2 = json.loads(out)["id"]
    # late enough that the watch has printed the running rollout, even on a loaded machine
    threading.Timer(1.5, act, args=("abort", rid2)).start()
    code, out, _ = run(capsys, "rollout", "watch", rid2, "--interval", "0.1", "--json")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 3 and lines[-1]["state"] == "aborted" and lines[0]["state"] == "running"


def test_exit_codes_for_user_errors_not_found_and_auth(live, capsys, monkeypatch, redis_client):
    code, _, err = run(capsys, "rollout", "status", "nope42")
    assert code == 4 and "no rollout 'nope42'" in err
    code, _, err = run(capsys, "rollout", "start", "digits", "9")
    assert code == 4 and "no version 9" in err
    code, _, err = run(capsys, "rollout", "start", "digits", "2", "--stages", "canary")
    assert code == 2 and "NAME=N" in err
    code, _, err = run(capsys, "rollout", "start", "digits", "2", "--canary", "0%")
    assert code == 2 and "--canary" in err
    code, _, err = run(capsys, "rollout", "start", "digits", "1")
    assert code == 2 and "already the fleet's target" in err
    monkeypatch.setenv("EDGELOOP_TOKEN", issue(redis_client, FLEET, "viewer"))
    code, _, err = run(capsys, "rollout", "start", "digits", "2")
    assert code == 5 and "admin" in err and "(HTTP 403)" in err
    assert run(capsys, "fleet")[0] == 0  # a viewer reads
    monkeypatch.delenv("EDGELOOP_TOKEN")
    code, _, err = run(capsys, "fleet")
    assert code == 5 and "EDGELOOP_TOKEN" in err


def test_pins_the_fleet_and_its_devices(live, capsys, tmp_path, monkeypatch):
    shas = live
    code, out, _ = run(capsys, "rollout", "pin", "pi-2", "2")
    assert code == 0 and "pi-2 pinned to digits v2" in out
    code, out, _ = run(capsys, "devices", "--json")
    devices = {d["device_id"]: d for d in json.loads(out)["devices"]}
    assert (
        devices["pi-2"]["pinned_sha256"] == shas[1] and devices["pi-2"]["desired_sha256"] == shas[1]
    )
    code, out, _ = run(capsys, "devices")
    assert code == 0 and "pi-2" in out and "serving" in out and "v1" in out
    code, out, _ = run(capsys, "fleet")
    assert code == 0 and "fleet lab: 4 devices, 4 online" in out and "v1" in out
    code, out, _ = run(capsys, "fleet", "--json")
    assert json.loads(out)["by_version"] == {"v1": 4}
    code, out, _ = run(capsys, "rollout", "unpin", "pi-2")
    assert code == 0 and "unpinned from digits" in out
    assert run(capsys, "rollout", "unpin", "pi-2")[0] == 4
    # The token from the client config file instead of the environment.
    token = os.environ["EDGELOOP_TOKEN"]
    monkeypatch.delenv("EDGELOOP_TOKEN")
    config = tmp_path / "client.toml"
    config.write_text(f'token = "{token}"\n')
    assert run(capsys, "fleet", "--config", str(config))[0] == 0


def test_commands_on_a_fleet_of_two_models_take_the_models_name(
    live, capsys, redis_client, tmp_path
):
    temp = seed_versions(redis_client, FLEET, tmp_path / "blobs", n=2, model="temp")
    both = {
        "digits": ModelServing(model="digits", version=1, sha256=live[0]),
        "temp": ModelServing(model="temp", version=1, sha256=temp[0], metric="mae"),
    }
    for d in DEVICES[:2]:
        report(redis_client, FLEET, d, live[0], version=1, models=both)

    for argv in (("rollout", "start", "2"), ("rollout", "pin", "pi-0", "2"), ("explain", "2")):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "has models digits, temp: pass --model" in err, (argv, err)

    code, out, _ = run(capsys, "rollout", "start", "2", "--model", "temp", "--json")
    assert code == 0
    r = json.loads(out)
    assert r["model"] == "temp" and set(r["stages"][-1]["devices"]) == set(DEVICES[:2])
    code, out, _ = run(capsys, "rollout", "start", "digits", "2", "--canary", "1", "--json")
    assert code == 0 and json.loads(out)["model"] == "digits"
    code, out, _ = run(capsys, "rollout", "status", "--model", "temp", "--json")
    assert [x["model"] for x in json.loads(out)["rollouts"]] == ["temp"]
    code, _, err = run(capsys, "rollout", "start", "digits", "2", "--model", "temp")
    assert code == 2 and "given twice" in err

    code, out, _ = run(capsys, "rollout", "pin", "pi-3", "2", "--model", "temp")
    assert code == 0 and "pi-3 pinned to temp v2" in out
    code, out, _ = run(capsys, "devices", "--model", "temp", "--json")
    assert sorted(d["device_id"] for d in json.loads(out)["devices"]) == DEVICES[:2]
    code, out, _ = run(capsys, "devices", "--model", "temp")
    assert code == 0 and "serving temp" in out and "mae" in out
    code, out, _ = run(capsys, "devices")
    assert code == 0 and "digits, temp" in out
    code, out, _ = run(capsys, "fleet")
    assert code == 0 and "temp" in out
    code, out, _ = run(capsys, "versions", "--model", "temp", "--json")
    assert code == 0 and [v["version"] for v in json.loads(out)["versions"]] == [1, 2]
