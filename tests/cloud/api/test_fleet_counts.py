"""The fleet's counts (cloud/registry/fleet_counts.py) against a full scan of the devices,
on a real redis-server: what ``GET /v1/fleet`` and ``/metrics`` read must be what reading
every device would say, after any sequence of reports, expiries and repairs."""

from __future__ import annotations

import random
import time

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.metrics_core import Metric

from cloud.api.app import create_app
from cloud.api.metrics import FleetCollector, scan_devices
from cloud.api.views.fleet import FleetView
from cloud.registry.blobs import DirBlobStore
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.versions import Registry
from shared.keys import FleetKeys
from shared.messages import EdgeCounters, EdgeStatus, ModelServing
from shared.status_report import add_status
from tests.cloud.api_helpers import bearer, dev_api_settings, issue

FLEET = "lab"


@pytest.fixture
def view(redis_client: redis.Redis, tmp_path) -> FleetView:
    keys = FleetKeys(FLEET)
    registry = Registry(redis_client, keys, DirBlobStore(tmp_path / "blobs"))
    return FleetView(redis_client, keys, registry, None, FleetCounts(redis_client, keys))


def status(device: str, version: int | None = 1, **fields) -> EdgeStatus:
    fields.setdefault("state", "serving")
    return EdgeStatus(device_id=device, fleet=FLEET, model="digits", version=version, **fields)


def edge_writes(client: redis.Redis, s: EdgeStatus, ttl_s: int = 60, maxlen: int = 10_000):
    """A report as an edge with Redis writes it: no script, no counting."""
    pipe = client.pipeline(transaction=False)
    add_status(pipe, FleetKeys(FLEET), s, ttl_s, maxlen)
    pipe.execute()


def http_writes(view: FleetView, s: EdgeStatus, ttl_s: int = 60) -> None:
    """A report as the API writes it for an HTTP edge: counted in the same transaction."""
    pipe = view.client.pipeline(transaction=True)
    add_status(pipe, view.keys, s, ttl_s, 10_000)
    view.counts.queue_report(pipe, s, ttl_s)
    pipe.execute()


def samples(families) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in families:
        assert isinstance(family, Metric)
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def assert_counts_match_scan(view: FleetView) -> None:
    counted = view.read_fleet()  # refreshes the counts: folds, sweeps
    scanned = view.scan_fleet()
    assert counted == scanned
    collector = FleetCollector(view, None, lambda: None)  # type: ignore[arg-type]
    assert samples(collector._devices()) == samples(scan_devices(view.statuses()))


def test_counts_follow_a_device_through_its_life(view, redis_client):
    client = redis_client
    edge_writes(client, status("pi-01", 1, counters=EdgeCounters(predictions=7)))
    edge_writes(client, status("pi-02", None))  # new device, baseline
    assert_counts_match_scan(view)
    assert view.read_fleet().by_version == {"baseline": 1, "v1": 1}

    edge_writes(client, status("pi-01", 2, counters=EdgeCounters(predictions=9)))  # new version
    http_writes(view, status("pi-02", None, state="degraded"))  # health change, over HTTP
    assert_counts_match_scan(view)
    fleet = view.read_fleet()
    assert fleet.by_version == {"baseline": 1, "v2": 1}
    assert fleet.by_health == {"degraded": 1, "serving": 1}
    assert fleet.models["digits"].by_version == {"baseline": 1, "v2": 1}

    edge_writes(client, status("pi-02", 2, stale=True), ttl_s=1)  # stale metadata, then lost
    assert view.read_fleet().stale == ["pi-02"]
    time.sleep(1.1)
    assert_counts_match_scan(view)
    fleet = view.read_fleet()
    assert fleet.by_health == {"offline": 1, "serving": 1} and fleet.online == 1
    assert fleet.stale == [] and fleet.by_version == {"unknown": 1, "v2": 1}

    http_writes(view, status("pi-02", 3, state="serving"))  # back
    assert_counts_match_scan(view)
    assert view.read_fleet().by_version == {"v2": 1, "v3": 1}


def test_the_http_path_counts_in_the_report_s_transaction(view, redis_client):
    """No fold, no sweep: the count is there as soon as the report is."""
    http_writes(view, status("pi-01", 4))
    assert view.counts.read().version_health == {("v4", "serving"): 1}
    # the controller folding the same report later changes nothing
    assert view.counts.fold() == 1
    assert view.counts.read().version_health == {("v4", "serving"): 1}


def test_an_older_report_never_undoes_a_newer_one(view, redis_client):
    edge_writes(redis_client, status("pi-01", 1))  # not folded yet
    http_writes(view, status("pi-01", 2))  # counted at once, at a later stream id
    view.counts.fold()  # folds both entries: the first is older than the count, skipped
    assert view.counts.read().version_health == {("v2", "serving"): 1}


def test_counts_equal_a_full_scan_after_random_updates(view, redis_client):
    rng = random.Random(14)
    devices = [f"d-{i:03d}" for i in range(60)]
    states = ["starting", "serving", "degraded", "stopping"]
    for round_ in range(3):
        for _ in range(300):
            d = rng.choice(devices)
            s = status(
                d,
                rng.choice([None, 1, 2, 3]),
                state=rng.choice(states),
                stale=rng.random() < 0.1,
                counters=EdgeCounters(
                    predictions=rng.randrange(1000),
                    fallback_reasons={"slow": rng.randrange(3)} if rng.random() < 0.3 else {},
                ),
                models={"other": ModelServing(model="other", version=rng.choice([None, 5]))}
                if rng.random() < 0.2
                else {},
            )
            ttl = 1 if rng.random() < 0.1 else 60
            if rng.random() < 0.5:
                http_writes(view, s, ttl)
            else:
                edge_writes(redis_client, s, ttl)
            if rng.random() < 0.05:
                view.counts.refresh()
        if round_ == 1:
            time.sleep(1.1)  # the short-lived reports expire
        assert_counts_match_scan(view)
    assert view.read_fleet().devices == len(set(devices) & set(view.counts.page("", 100)[0]))

    # a rebuild from a full scan gives the same counts, even from damaged ones
    redis_client.hincrby(FleetKeys(FLEET).fleet_counts, "vh:v9|serving", 5)
    before = view.scan_fleet()
    assert view.counts.recount() == len(view.statuses())
    assert view.read_fleet() == before


def test_a_trimmed_status_stream_is_repaired_from_the_device_keys(view, redis_client):
    view.counts.batch = 20
    view.read_fleet()  # the counts exist, folded up to here
    for i in range(200):  # 200 reports on a stream capped at 5: most are never folded
        edge_writes(redis_client, status(f"pi-{i:03d}", i % 3), maxlen=5)
    redis_client.xtrim(FleetKeys(FLEET).status, maxlen=5, approximate=False)
    view.counts.refresh()
    assert redis_client.exists(FleetKeys(FLEET).counts_repair)  # a walk, 20 devices a step
    for _ in range(30):
        view.counts.refresh()
    assert not redis_client.exists(FleetKeys(FLEET).counts_repair)
    view.counts.batch = 1000
    assert_counts_match_scan(view)
    assert view.read_fleet().devices == 200


def test_a_fleet_without_counts_is_counted_by_a_walk_no_read_pays_for(view, redis_client):
    """An upgraded fleet: devices reported before the counts existed. Its first reads
    count it 100 devices at a time; then the counts are the scan's."""
    keys = FleetKeys(FLEET)
    pipe = redis_client.pipeline(transaction=False)
    for i in range(400):
        add_status(pipe, keys, status(f"pi-{i:03d}", i % 2), 60, 10_000)
    pipe.execute()
    redis_client.delete(keys.status)  # history gone: only the device keys remain
    view.counts.batch = 100
    first = view.read_fleet().devices
    assert 0 < first < 400 and redis_client.exists(keys.counts_repair)
    for _ in range(10):
        view.read_fleet()
    assert not redis_client.exists(keys.counts_repair)
    assert view.read_fleet().devices == 400
    assert_counts_match_scan(view)


# -- over HTTP --------------------------------------------------------------------


@pytest.fixture
def api(redis_url, tmp_path):
    with TestClient(create_app(dev_api_settings(FLEET, redis_url, tmp_path))) as client:
        yield client


def test_a_status_posted_over_http_is_counted(api, redis_client):
    device = bearer(issue(redis_client, FLEET, "device", device="pi-07"))
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    body = status("pi-07", 3).model_dump(mode="json")
    assert api.post("/v1/devices/pi-07/status", json=body, headers=device).status_code == 202
    counts = FleetCounts(redis_client, FleetKeys(FLEET)).read()
    assert counts.version_health == {("v3", "serving"): 1}
    assert api.get("/v1/fleet", headers=viewer).json()["by_version"] == {"v3": 1}


def test_a_cursor_walk_lists_every_device_once(api, redis_client):
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    assert api.get("/v1/fleet", headers=viewer).json()["devices"] == 0  # the fleet's counts
    devices = [f"d-{i:04d}" for i in range(1203)]
    pipe = redis_client.pipeline(transaction=False)
    for d in devices:
        add_status(pipe, FleetKeys(FLEET), status(d), 60, 100_000)
    pipe.execute()
    seen: list[str] = []
    cursor = ""
    pages = 0
    while cursor is not None:
        page = api.get(f"/v1/devices?limit=500&cursor={cursor}", headers=viewer).json()
        assert len(page["devices"]) <= 500 and page["total"] == len(devices)
        seen += [d["device_id"] for d in page["devices"]]
        cursor = page["next_cursor"]
        pages += 1
        if pages == 1:  # devices that report during the walk are neither lost nor repeated
            for d in (devices[0], devices[-1]):
                edge_writes(redis_client, status(d, 2))
    assert pages == 3 and sorted(seen) == devices and len(seen) == len(set(seen))
    legacy = api.get("/v1/devices?limit=2&offset=1", headers=viewer).json()
    assert len(legacy["devices"]) == 2 and legacy["next_cursor"] is None


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("limit=0", "greater than or equal to 1"),
        ("limit=501", "less than or equal to 500"),
        ("limit=ten", "valid integer"),
        ("cursor=no%20such%20thing", "cursor"),
        ("cursor=&offset=3", "not both"),
    ],
)
def test_bad_page_parameters_are_refused(api, redis_client, query, says):
    viewer = bearer(issue(redis_client, FLEET, "viewer"))
    r = api.get(f"/v1/devices?{query}", headers=viewer)
    assert r.status_code == 422 and says in r.text


def test_edgeloop_controller_recounts_and_its_step_folds(redis_client, redis_url, tmp_path, capsys):
    """``--recount`` rebuilds the counts from the devices; ``--once`` folds what edges wrote."""
    from cloud.cli import main as cli
    from tests.cloud.api_helpers import PEPPER

    keys = FleetKeys(FLEET)
    for i in range(30):
        edge_writes(redis_client, status(f"pi-{i:02d}", i % 2))
    redis_client.delete(keys.status)  # reports from before the counts: only the keys remain
    config = tmp_path / "api.toml"
    config.write_text(
        f'mode = "development"\nfleet = "{FLEET}"\nredis_url = "{redis_url}"\n'
        f'blob_dir = "{tmp_path / "blobs"}"\ntoken_pepper = "{PEPPER}"\n'
    )
    assert cli.main(["controller", "--config", str(config), "--recount"]) == 0
    assert "30 devices counted" in capsys.readouterr().out
    counts = FleetCounts(redis_client, keys)
    assert counts.read().by_version() == {"v0": 15, "v1": 15}

    edge_writes(redis_client, status("pi-00", 7))
    assert counts.read().by_version() == {"v0": 15, "v1": 15}  # not folded yet
    assert cli.main(["controller", "--config", str(config), "--once"]) == 0
    assert counts.read().by_version() == {"v0": 14, "v1": 15, "v7": 1}


def test_reads_fold_a_few_reports_while_a_controller_keeps_the_counts_fresh(view, redis_client):
    """While a controller keeps the counts up to date (its ``catch_up`` marks them fresh),
    a read folds at most ``read_batch`` reports and no sweep: its cost is bounded whatever
    the report rate. Once the controller misses its steps the mark expires and a read
    brings the counts up to date itself."""
    view.counts.read_batch = 2
    edge_writes(redis_client, status("pi-01", 1))
    view.counts.catch_up(fresh_s=0.5)
    assert redis_client.exists(view.keys.counts_folded)
    for i in range(2, 7):  # five edges' reports since the controller's step
        edge_writes(redis_client, status(f"pi-{i:02d}", 1))
    assert view.read_fleet().devices == 3  # the read folded two of them
    assert view.read_fleet().devices == 5
    time.sleep(0.6)  # the controller missed its steps: a read folds all that is left
    view.counts.batch = 1000
    assert view.read_fleet().by_version == {"v1": 6}
    assert_counts_match_scan(view)

    # a fold that leaves reports behind does not mark the counts fresh
    for i in range(7, 12):
        edge_writes(redis_client, status(f"pi-{i:02d}", 2))
    view.counts.batch = 2
    view.counts.catch_up(rounds=1, fresh_s=60)
    assert not redis_client.exists(view.keys.counts_folded)
