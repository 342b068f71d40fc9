"""The key ceremony (``edgeloop keys``) against a real redis-server and the real edge
TufClient: edges follow the root chain after a rotation, every stored version stays
installable, a rotated-out key is refused, and bad input is one line with exit 2."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata, Root

from cloud.cli.main import main
from cloud.registry.publisher import Publisher, PublishRequest
from cloud.registry.tuf_keys import KeyDir, current_root, init_fleet, revoke_key, rotate_key
from cloud.registry.tuf_repo import TufRepository, TufSigners, load_signer
from cloud.registry.versions import MemoryBlobStore, Registry
from edge.daemon import EdgeDaemon
from edge.tuf_client import TufClient, TufRefused
from shared.codec import decode_full
from shared.errors import ConfigError
from shared.keys import FleetKeys
from shared.messages import EdgeStatus, ProbeSet
from shared.signing import Signer, generate_keypair
from tests.edge.helpers import make_manifest, variant
from tests.serving import make_settings, wait_for


def _url(client) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"redis://{kw['host']}:{kw['port']}/{kw.get('db', 0)}"


class Fleet:
    """A fleet made by ``init_fleet``; the trainer publishes with the key file it holds."""

    def __init__(self, client, keys: FleetKeys, directory: Path) -> None:
        self.client, self.keys = client, keys
        self.keydir = KeyDir(directory / "keys")
        self.root_v1 = init_fleet(client, keys, self.keydir, root_keys=3, threshold=2)
        self.registry = Registry(client, keys, MemoryBlobStore())
        self.manifest_signer = Signer(generate_keypair()[0])

    def publisher(self, targets_key: Path | None = None) -> Publisher:
        """The trainer, holding the targets key file (``targets_key`` or the current one)."""
        repo = TufRepository(
            self.client,
            self.keys,
            TufSigners(
                load_signer(targets_key or self.keydir.file("targets")),
                load_signer(self.keydir.file("online")),
            ),
        )
        return Publisher(self.registry, self.manifest_signer, tuf=repo)

    def publish(self, content: bytes, targets_key: Path | None = None):
        probe = ProbeSet(inputs=[[0.0] * 4], expected=[[0.5, 0.5]])
        return self.publisher(targets_key).publish(
            PublishRequest("digits", content, 4, ["a", "b"], probe, runtime="test")
        )

    def edge(self, directory: Path) -> TufClient:
        return TufClient(self.client, self.keys, directory, self.root_v1)


def _forge_targets(fleet: Fleet, signer, content: bytes) -> str:
    """Targets listing ``content`` signed by ``signer``, written straight to Redis, and
    snapshot and timestamp re-signed over them by the fleet's online key (the
    attacks scenario's own forgery)."""
    from cloud.demo.attacks import forge_targets
    from shared.codec import sha256_hex

    online = TufRepository(
        fleet.client, fleet.keys, TufSigners(online=load_signer(fleet.keydir.file("online")))
    )
    forge_targets(fleet.client, fleet.keys, signer, content, online)
    return sha256_hex(content)


@pytest.fixture
def fleet(redis_client, keys, tmp_path) -> Fleet:
    return Fleet(redis_client, keys, tmp_path)


def test_init_writes_private_keys_0600_and_root_v1(fleet):
    files = [*fleet.keydir.path.glob("*.key"), *fleet.keydir.roots.glob("*.key")]
    assert len(files) == 3 + 3  # targets, online, director + 3 root keys
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    root = Metadata[Root].from_bytes(fleet.keydir.trusted_root.read_bytes()).signed
    assert root.version == 1 and root.roles["root"].threshold == 2
    assert len(root.roles["root"].keyids) == 3
    with pytest.raises(ConfigError, match="already has a TUF repository"):
        init_fleet(fleet.client, fleet.keys, KeyDir(fleet.keydir.path.parent / "again"))


def test_targets_rotation_keeps_every_version_and_refuses_the_old_key(fleet, tmp_path):
    started = time.perf_counter()
    v1 = fleet.publish(b"v1" * 500)
    edge = fleet.edge(tmp_path / "edge")
    edge.download(v1.sha256)
    assert edge.root_version == 1
    old_key = fleet.keydir.path / "old-targets.key"
    old_key.write_bytes(fleet.keydir.file("targets").read_bytes())

    root = rotate_key(fleet.client, fleet.keys, fleet.keydir, "targets").signed
    assert root.version == 2
    # The edge that trusted root v1 follows to v2; the stored version is still listed
    # (targets re-signed with the new key) and installs.
    got = edge.download(v1.sha256)
    assert edge.root_version == 2 and decode_full(got.artifact) == b"v1" * 500
    v2 = fleet.publish(b"v2" * 500)  # the trainer restarted with the new key
    assert decode_full(edge.download(v2.sha256).artifact) == b"v2" * 500
    # A new device given only root v1 walks the chain too.
    fresh = fleet.edge(tmp_path / "fresh")
    fresh.download(v1.sha256)
    assert fresh.root_version == 2

    # A trainer not restarted refuses to publish with its rotated-out key ...
    with pytest.raises(ConfigError, match="rotated out"):
        fleet.publish(b"late" * 500, targets_key=old_key)
    # ... and targets a thief signs with it (even vouched for by the online key) are
    # refused by the edge.
    evil = _forge_targets(fleet, load_signer(old_key), b"evil" * 500)
    with pytest.raises(TufRefused, match="targets"):
        edge.download(evil)
    with pytest.raises(TufRefused):
        fleet.edge(tmp_path / "third").download(v1.sha256)
    assert time.perf_counter() - started < 8


def test_online_key_rotation_re_signs_snapshot_and_timestamp(fleet, tmp_path):
    v1 = fleet.publish(b"v1" * 100)
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "timestamp")
    root = Metadata[Root].from_bytes(fleet.keydir.trusted_root.read_bytes()).signed
    assert root.roles["snapshot"].keyids == root.roles["timestamp"].keyids
    assert edge.download(v1.sha256).sha256 == v1.sha256 and edge.root_version == 2


def test_root_rotation_needs_the_old_and_the_new_threshold(fleet, tmp_path):
    v1 = fleet.publish(b"v1" * 100)
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "root")  # every root key replaced
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "root")
    assert edge.download(v1.sha256).sha256 == v1.sha256 and edge.root_version == 3
    # Only one of the root keys at hand: below the threshold of 2, nothing changes.
    lone = fleet.keydir.path.parent / "lone"
    lone.mkdir()
    first = sorted(fleet.keydir.roots.glob("*.key"))[0]
    (lone / first.name).write_bytes(first.read_bytes())
    with pytest.raises(ConfigError, match="needs 2 signatures"):
        rotate_key(fleet.client, fleet.keys, KeyDir(fleet.keydir.path, lone), "targets")
    edge.refresh()
    assert edge.root_version == 3


def test_revoke_a_root_key_and_refuse_below_threshold(fleet, tmp_path):
    root = Metadata[Root].from_bytes(fleet.root_v1).signed
    gone = root.roles["root"].keyids[0]
    new = revoke_key(fleet.client, fleet.keys, fleet.keydir, "root", gone[:10]).signed
    assert gone not in new.roles["root"].keyids and len(new.roles["root"].keyids) == 2
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    assert edge.root_version == 2
    targets = new.roles["targets"].keyids[0]
    with pytest.raises(ConfigError, match="below its threshold"):
        revoke_key(fleet.client, fleet.keys, fleet.keydir, "targets", targets)
    with pytest.raises(ConfigError, match="has no key"):
        revoke_key(fleet.client, fleet.keys, fleet.keydir, "root", "00000000")


def test_director_key_rotation_reaches_the_edge_through_the_root(fleet, tmp_path):
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    assert edge.director_keys() == [(fleet.keydir.path / "director.pub").read_bytes()]
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "director")
    edge.refresh()
    assert edge.director_keys() == [(fleet.keydir.path / "director.pub").read_bytes()]


def _request(version: int) -> PublishRequest:
    data = variant(version)
    m = make_manifest(data, version)
    return PublishRequest("digits", data, m.num_features, m.labels, m.probe, runtime=m.runtime)


def test_edge_daemon_follows_orders_of_the_director_its_root_names(
    redis_client, keys, tmp_path, signing, caplog
):
    """No director_keys on the device: the root names the director; after a rotation
    an order signed by the old director key is refused, the new key's followed."""
    from cloud.rollout.director import Director

    fleet = Fleet(redis_client, keys, tmp_path)
    fleet.manifest_signer = signing.signer
    publisher = fleet.publisher()
    publisher.release = "manual"
    v1, v2 = publisher.publish(_request(1)), publisher.publish(_request(2))
    old_director = Director(redis_client, keys, Signer(fleet.keydir.file("director").read_bytes()))
    old_director.order("digits", v1.sha256)
    settings = make_settings(
        tmp_path,
        _url(redis_client),
        signing.public_key,
        tuf_root=fleet.keydir.trusted_root,
        guard_enabled=False,
        desired_poll_s=0.2,
    )
    with EdgeDaemon(settings) as daemon:
        wait_for(lambda: _serving(daemon) == 1, what="v1: the root-named director's order")
        assert daemon.health().tuf_root_version == 1
        rotate_key(redis_client, keys, fleet.keydir, "director")
        wait_for(lambda: daemon.health().tuf_root_version == 2, what="root v2 followed")
        caplog.clear()
        old_director.order("digits", v2.sha256)  # the rotated-out key
        wait_for(
            lambda: "not signed by a trusted director key" in caplog.text,
            what="the old director key's order refused",
        )
        assert _serving(daemon) == 1
        new_director = Director(
            redis_client, keys, Signer(fleet.keydir.file("director").read_bytes())
        )
        new_director.order("digits", v2.sha256)
        wait_for(lambda: _serving(daemon) == 2, what="v2: the new director key's order")


def _serving(daemon: EdgeDaemon) -> int | None:
    current = daemon.chain.current
    return current.version if current else None


def test_show_lists_roles_and_the_root_each_edge_trusts(fleet, capsys):
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "targets")
    for device, version in (("pi-1", 2), ("pi-2", 1), ("pi-3", None)):
        status = EdgeStatus(device_id=device, fleet="lab", model="digits", tuf_root_version=version)
        fleet.client.set(fleet.keys.device(device), status.to_wire())
        fleet.client.zadd(fleet.keys.devices, {device: time.time()})
    url = _url(fleet.client)
    assert main(["keys", "show", "--fleet", "lab", "--redis-url", url, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["root_version"] == 2
    assert (
        shown["roles"]["root"]["threshold"] == 2 and len(shown["roles"]["director"]["keyids"]) == 1
    )
    by_device = {e["device_id"]: e for e in shown["edges"]}
    assert by_device["pi-2"]["behind"] and not by_device["pi-1"]["behind"]
    assert by_device["pi-3"]["tuf_root_version"] is None
    assert main(["keys", "show", "--fleet", "lab", "--redis-url", url]) == 0
    text = capsys.readouterr().out
    assert "root v2" in text and "(behind)" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["rotate", "nosuchrole"], "unknown role 'nosuchrole'"),
        (["init", "--root-keys", "3", "--threshold", "4"], "threshold 4 must be between"),
        (["rotate", "targets", "--root-keys-dir", "/nonexistent"], "no root keys in"),
        (["revoke", "root", "abc"], "has no key 'abc'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fleet, capsys, tmp_path, argv, message):
    keydir = fleet.keydir.path if argv[0] != "init" else tmp_path / "new"
    fleet_name = "lab" if argv[0] != "init" else "other"
    code = main(
        [
            "keys",
            *argv,
            "--fleet",
            fleet_name,
            "--keys",
            str(keydir),
            "--redis-url",
            _url(fleet.client),
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1


def test_missing_targets_key_file_is_one_line(fleet, capsys):
    fleet.keydir.file("online").unlink()
    fleet.keydir.file("targets").unlink()
    # Rotating the targets key needs no old targets key; rotating works without the
    # online key (the controller's schedule re-signs snapshot and timestamp).
    url = _url(fleet.client)
    assert (
        main(
            [
                "keys",
                "rotate",
                "targets",
                "--fleet",
                "lab",
                "--keys",
                str(fleet.keydir.path),
                "--redis-url",
                url,
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main(["keys", "show", "--fleet", "nofleet", "--redis-url", url])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no TUF repository" in err and len(err.splitlines()) == 1


def test_offline_ceremony_then_publish(fleet, tmp_path, capsys):
    """Root keys on an air-gapped machine: rotate there (no Redis), carry the signed
    root and the new targets key, publish online; a root short of signatures is refused."""
    v1 = fleet.publish(b"v1" * 100)
    edge = fleet.edge(tmp_path / "edge")
    edge.refresh()
    rotate_key(None, fleet.keys, fleet.keydir, "targets")
    assert current_root(fleet.client, fleet.keys).signed.version == 1  # nothing online yet
    signed = fleet.keydir.path / "2.root.json"
    short = Metadata[Root].from_bytes(signed.read_bytes())
    while len(short.signatures) > 1:  # 1 of the 2 root signatures needed
        short.signatures.popitem()
    (tmp_path / "short.json").write_bytes(short.to_bytes())
    url = _url(fleet.client)
    base = ["--fleet", "lab", "--redis-url", url]
    assert main(["keys", "publish", str(tmp_path / "short.json"), *base]) == 2
    assert "not signed by the current root's keys" in capsys.readouterr().err
    assert main(["keys", "publish", str(signed), *base]) == 2
    assert "--targets-key" in capsys.readouterr().err
    args = ["--targets-key", str(fleet.keydir.file("targets"))]
    args += ["--online-key", str(fleet.keydir.file("online"))]
    assert main(["keys", "publish", str(signed), *args, *base]) == 0
    assert edge.download(v1.sha256).sha256 == v1.sha256 and edge.root_version == 2


def test_keys_commands_do_not_import_torch(fleet):
    """The ceremony runs on a bare machine: no torch on it."""
    import subprocess
    import sys

    code = (
        "import sys; from cloud.cli.main import main; "
        "rc = main(['keys', 'show', '--fleet', 'lab', '--redis-url', sys.argv[1]]); "
        "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)"
    )
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run(
        [sys.executable, "-c", code, _url(fleet.client)], cwd=root, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr


def test_cli_init_then_rotate(redis_client, tmp_path, capsys):
    url, d = _url(redis_client), tmp_path / "k"
    base = ["--fleet", "cli", "--keys", str(d), "--redis-url", url]
    assert main(["keys", "init", "--root-keys", "2", "--threshold", "1", *base]) == 0
    assert "offline media" in capsys.readouterr().out
    old_director = (d / "director.pub").read_bytes()
    assert main(["keys", "rotate", "director", *base, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["root_version"] == 2 and shown["roles"]["root"]["threshold"] == 1
    assert (d / "director.pub").read_bytes() != old_director
    assert stat.S_IMODE((d / "director.key").stat().st_mode) == 0o600
    assert [p.name.split(".")[0] for p in (d / "retired").iterdir()] == ["director"]


def test_a_root_must_follow_the_stored_one(fleet):
    """Two ceremonies at once: the second's root (same version) is refused."""
    rotate_key(fleet.client, fleet.keys, fleet.keydir, "director")
    stale = TufRepository(fleet.client, fleet.keys, TufSigners())
    with pytest.raises(ConfigError, match="is v2 now"):
        stale.publish_root(fleet.keydir.trusted_root.read_bytes())
