"""Artifact codec and signatures: what verifies, and everything that must not."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import check_sha256, decode_full, encode_full, sha256_hex
from shared.errors import ArtifactError, ConfigError, IntegrityError, SignatureError
from shared.keys import FleetKeys, check_name
from shared.messages import Signature
from shared.signing import Signer, Verifier, generate_keypair, write_keypair

KEYS = generate_keypair()


@given(st.binary(max_size=5000))
def test_full_encoding_round_trips(data):
    assert decode_full(encode_full(data, level=3)) == data


@given(st.binary(min_size=1, max_size=2000), st.integers(0, 10**6))
def test_corrupted_or_truncated_frames_are_refused(data, where):
    blob = bytearray(encode_full(data, level=3))
    cut = bytes(blob[: where % len(blob)])
    with pytest.raises(ArtifactError):
        decode_full(cut)


def test_oversize_artifact_is_refused_before_inflating():
    blob = encode_full(b"\0" * 100_000)
    with pytest.raises(ArtifactError, match="over the 1000 cap"):
        decode_full(blob, max_size=1000)


def test_sha256_check():
    check_sha256(b"abc", sha256_hex(b"abc"))
    with pytest.raises(IntegrityError):
        check_sha256(b"abd", sha256_hex(b"abc"))


@given(st.binary(max_size=500))
def test_signature_verifies_exact_bytes_only(data):
    private_pem, public_pem = KEYS
    sig = Signer(private_pem).sign(data)
    Verifier(public_pem).verify(data, sig)
    with pytest.raises(SignatureError):
        Verifier(public_pem).verify(data + b"x", sig)


def test_unsigned_wrong_key_and_mangled_signatures_are_refused():
    private_pem, public_pem = KEYS
    other_private, _ = generate_keypair()
    verifier = Verifier(public_pem)
    with pytest.raises(SignatureError, match="unsigned"):
        verifier.verify(b"m", None)
    foreign = Signer(other_private).sign(b"m")
    with pytest.raises(SignatureError, match="trusts key"):
        verifier.verify(b"m", foreign)
    good = Signer(private_pem).sign(b"m")
    raw = bytearray(base64.b64decode(good.value))
    raw[0] ^= 1
    with pytest.raises(SignatureError):
        verifier.verify(b"m", Signature(key_id=good.key_id, value=base64.b64encode(raw).decode()))
    with pytest.raises(SignatureError):
        verifier.verify(b"m", Signature(key_id=good.key_id, value="not base64!"))


def test_keypair_files(tmp_path):
    private_path, public_path = write_keypair(tmp_path)
    assert private_path.stat().st_mode & 0o777 == 0o600
    sig = Signer.from_file(private_path).sign(b"x")
    Verifier.from_file(public_path).verify(b"x", sig)
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        write_keypair(tmp_path)
    with pytest.raises(ConfigError):
        Verifier.from_file(tmp_path / "missing.pub")
    with pytest.raises(ConfigError):
        Verifier(b"not a key")


def test_keys_are_hash_tagged_and_names_checked():
    k = FleetKeys("lab-1")
    for name in (
        k.feedback,
        k.deltas,
        k.status,
        k.deadletter,
        k.device("pi"),
        k.artifact("a"),
        k.manifest("a"),
        k.seen,
        k.seen_of("m"),
        k.feedback_of("m"),
        k.replay("m"),
        k.versions("m"),
    ):
        assert name.startswith("el:{lab-1}:")
    for bad in ("", "a b", "x}", "{y", "a" * 65, "-lead"):
        with pytest.raises(ValueError):
            check_name("fleet", bad)
