"""The model store: atomic installs, restart resume, keep-N, refusal of corrupted files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import make_manifest, sign, variant

from edge.model_store import ModelStore, load_if_sound
from shared.codec import sha256_hex
from shared.errors import IntegrityError, NotFound
from tests.serving import Signing


def install(store: ModelStore, signing: Signing, data: bytes, version: int) -> str:
    return store.install(
        data, sign(signing.signer, make_manifest(data, version)), last_known_good=store.current
    )


def test_install_makes_current_and_demotes_previous(tmp_path: Path, signing: Signing) -> None:
    store = ModelStore(tmp_path, keep=5)
    a = install(store, signing, variant(1), 1)
    b = install(store, signing, variant(2), 2)
    assert (store.current, store.last_known_good) == (b, a)
    loaded = store.load(b)
    assert (
        loaded.version == 2
        and loaded.data == variant(2)
        and loaded.sha256 == sha256_hex(variant(2))
    )
    assert [h["version"] for h in store.history()] == [1, 2]


def test_restart_resumes_current_last_known_good_epoch_and_stream_position(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path)
    a = install(store, signing, variant(1), 1)
    b = install(store, signing, variant(2), 2)
    store.set_deltas_last_id("1700000000000-3")
    again = ModelStore(tmp_path)
    assert (again.current, again.last_known_good) == (b, a)
    assert again.epoch == store.epoch
    assert again.deltas_last_id == "1700000000000-3"


def test_a_new_state_directory_gets_a_new_epoch(tmp_path: Path) -> None:
    assert ModelStore(tmp_path / "one").epoch != ModelStore(tmp_path / "two").epoch


def test_writes_are_atomic_and_leave_no_temp_files(tmp_path: Path, signing: Signing) -> None:
    store = ModelStore(tmp_path)
    install(store, signing, variant(1), 1)
    leftovers = [p.name for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["current"] == sha256_hex(variant(1))


def test_a_crash_before_the_state_write_keeps_the_old_version(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path)
    a = install(store, signing, variant(1), 1)
    # What a crash after writing the files but before state.json leaves behind,
    # plus a temp file from an interrupted atomic write.
    orphan = variant(2)
    store.model_path(sha256_hex(orphan)).write_bytes(orphan)
    (tmp_path / "models" / ".x.tflite.123.tmp").write_bytes(b"half")
    again = ModelStore(tmp_path, keep=2)
    assert again.current == a
    assert not list((tmp_path / "models").glob(".*.tmp"))
    install(again, signing, variant(3), 3)
    assert sha256_hex(orphan) not in again.stored()


def test_keeps_the_last_n_versions_but_never_current_or_last_known_good(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path, keep=3)
    shas = [install(store, signing, variant(i), i) for i in range(1, 7)]
    assert store.stored() == sorted(shas[-3:])
    # Roll back to an old version: it becomes current again and must survive pruning.
    old = variant(1)
    store.install(old, sign(signing.signer, make_manifest(old, 7)), last_known_good=store.current)
    for i in range(8, 11):
        install(store, signing, variant(i), i)
    assert store.current in store.stored() and store.last_known_good in store.stored()
    assert len(store.stored()) == 3
    assert not [
        p
        for p in (tmp_path / "models").glob("*.manifest.json")
        if p.name[:64] not in store.stored()
    ]


def test_last_known_good_can_be_kept_when_the_old_current_was_unusable(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path)
    a = install(store, signing, variant(1), 1)
    install(store, signing, variant(2), 2)
    c = store.install(
        variant(3), sign(signing.signer, make_manifest(variant(3), 3)), last_known_good=a
    )
    assert (store.current, store.last_known_good) == (c, a)


def test_a_corrupted_file_is_refused_on_load(tmp_path: Path, signing: Signing) -> None:
    store = ModelStore(tmp_path)
    sha = install(store, signing, variant(1), 1)
    path = store.model_path(sha)
    data = bytearray(path.read_bytes())
    data[1000] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError):
        store.load(sha)
    assert load_if_sound(store, sha) is None


def test_a_missing_file_is_not_found(tmp_path: Path, signing: Signing) -> None:
    store = ModelStore(tmp_path)
    sha = install(store, signing, variant(1), 1)
    store.model_path(sha).unlink()
    with pytest.raises(NotFound):
        store.load(sha)
    assert load_if_sound(store, None) is None


def test_install_refuses_data_that_does_not_match_its_manifest(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path)
    signed = sign(signing.signer, make_manifest(variant(1), 1))
    with pytest.raises(IntegrityError):
        store.install(variant(2), signed, last_known_good=None)
    assert store.current is None and store.stored() == []


def test_an_unreadable_state_file_is_set_aside_with_a_new_epoch(
    tmp_path: Path, signing: Signing
) -> None:
    store = ModelStore(tmp_path)
    install(store, signing, variant(1), 1)
    (tmp_path / "state.json").write_text("{not json")
    again = ModelStore(tmp_path)
    assert again.current is None
    assert again.epoch != store.epoch
    assert list(tmp_path.glob("state.json.corrupt-*"))
