"""The patch codec: round trips over random bases and sparse edits, and every refusal."""

from __future__ import annotations

import itertools
import struct

import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from shared.codec import sha256_hex
from shared.delta import (
    HEADER_SIZE,
    NotPatchable,
    PatchBaseMismatch,
    PatchError,
    apply_patch,
    changed_ranges,
    make_patch,
    read_header,
)
from shared.errors import ArtifactError, IntegrityError

MAX = 1 << 20


@st.composite
def base_and_target(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A random base and a copy with a few sparse edits (single bytes and short runs)."""
    base = draw(st.binary(min_size=1, max_size=4000))
    target = bytearray(base)
    edits = draw(
        st.lists(
            st.tuples(st.integers(0, len(base) - 1), st.binary(min_size=1, max_size=12)),
            max_size=20,
        )
    )
    for at, data in edits:
        target[at : at + len(data)] = data[: len(base) - at]
    return base, bytes(target)


@given(base_and_target(), st.integers(0, 32))
def test_patches_round_trip(pair: tuple[bytes, bytes], merge_gap: int) -> None:
    base, target = pair
    patch = make_patch(base, target, merge_gap=merge_gap, level=3)
    assert apply_patch(base, patch, MAX) == target
    header = read_header(patch)
    assert (header.base_sha256, header.target_sha256, header.target_size) == (
        sha256_hex(base),
        sha256_hex(target),
        len(target),
    )


@given(base_and_target(), st.integers(0, 32))
def test_ranges_cover_every_change_and_respect_the_gap(pair: tuple[bytes, bytes], gap: int) -> None:
    base, target = pair
    ranges = changed_ranges(base, target, gap)
    changed = {i for i in range(len(base)) if base[i] != target[i]}
    covered = {i for s, e in ranges for i in range(s, e)}
    assert changed <= covered
    for s, e in ranges:  # every range starts and ends on a changed byte
        assert s in changed and e - 1 in changed
    for (_, end), (start, _) in itertools.pairwise(ranges):
        assert start - end > gap


def test_identical_files_make_an_empty_patch() -> None:
    data = bytes(range(256)) * 8
    patch = make_patch(data, data)
    assert len(patch) < HEADER_SIZE + 32
    assert apply_patch(data, patch, MAX) == data


def test_a_sparse_edit_makes_a_small_patch() -> None:
    base = bytes(i * 7 % 251 for i in range(50_000))
    target = bytearray(base)
    for i in range(0, 50_000, 997):
        target[i] = (target[i] + 1) % 256
    patch = make_patch(base, bytes(target))
    assert len(patch) < 400
    assert apply_patch(base, patch, MAX) == target


def test_lengths_that_differ_are_not_patchable() -> None:
    with pytest.raises(NotPatchable, match="ship the full file"):
        make_patch(b"abc", b"abcd")


@given(base_and_target(), st.binary(min_size=1, max_size=200))
def test_a_patch_on_another_base_is_refused_before_it_is_read(
    pair: tuple[bytes, bytes], other: bytes
) -> None:
    base, target = pair
    patch = make_patch(base, target, level=3)
    if other == base:
        return
    with pytest.raises(PatchBaseMismatch):
        apply_patch(other, patch, MAX)


@given(base_and_target(), st.integers(0, 10**6))
def test_truncated_patches_are_refused(pair: tuple[bytes, bytes], where: int) -> None:
    base, target = pair
    patch = make_patch(base, target, level=3)
    with pytest.raises(PatchError):
        apply_patch(base, patch[: where % len(patch)], MAX)


@given(base_and_target(), st.integers(0, 10**6), st.integers(1, 255))
def test_a_corrupted_patch_never_yields_a_wrong_file(
    pair: tuple[bytes, bytes], where: int, flip: int
) -> None:
    base, target = pair
    patch = bytearray(make_patch(base, target, level=3))
    patch[where % len(patch)] ^= flip
    try:
        result = apply_patch(base, bytes(patch), MAX)
    except (ArtifactError, IntegrityError):
        return
    # Some bytes carry nothing the result depends on (the reserved flags, parts of
    # the zstd frame header): a flip there may pass, but never with a wrong file.
    assert result == target


def test_a_consistent_body_with_the_wrong_data_fails_the_target_hash() -> None:
    base = bytes(100)
    patch = make_patch(base, b"\1" + bytes(99))
    forged = patch[:HEADER_SIZE] + zstandard.ZstdCompressor().compress(
        struct.pack("<I", 1) + bytes(4) + b"\1\0\0\0" + b"\2"
    )
    with pytest.raises(IntegrityError, match="the patch promised"):
        apply_patch(base, forged, MAX)


def test_ranges_past_the_end_are_refused() -> None:
    base = bytes(100)
    patch = make_patch(base, b"\1" + bytes(99))
    forged = patch[:HEADER_SIZE] + zstandard.ZstdCompressor().compress(
        struct.pack("<I", 1) + bytes([99, 0, 0, 0]) + bytes([5, 0, 0, 0]) + b"\1" * 5
    )
    with pytest.raises(PatchError, match="past the file"):
        apply_patch(base, forged, MAX)


def test_bad_magic_format_and_oversize_are_refused() -> None:
    base = bytes(1000)
    patch = make_patch(base, b"\1" + bytes(999))
    with pytest.raises(PatchError, match="magic"):
        apply_patch(base, b"XXXX" + patch[4:], MAX)
    with pytest.raises(PatchError, match="format 2"):
        apply_patch(base, patch[:4] + b"\2" + patch[5:], MAX)
    with pytest.raises(ArtifactError, match="over the 999 cap"):
        apply_patch(base, patch, 999)
    bomb = patch[:HEADER_SIZE] + zstandard.ZstdCompressor().compress(bytes(100_000))
    with pytest.raises(PatchError, match="more than a sound one"):
        apply_patch(base, bomb, MAX)
