"""The ``patch`` encoding: a model file as the byte ranges that changed from a base.

A retrained int8 model has the same length and layout as its parent (DESIGN:
conversion keeps buffer offsets), so the cheapest delta is the ranges whose
bytes differ. A patch is a fixed header and one zstd frame::

    offset  size  field
    0       4     magic b"ELPT"
    4       1     format version (1)
    5       1     flags (0; reserved)
    6       32    sha256 of the base (raw bytes)
    38      32    sha256 of the target
    70      8     target size (u64, big-endian; equal to the base's)
    78      ...   zstd frame (with checksum) of the body

    body:   u32 count (little-endian), the ``count`` gaps, the ``count``
            lengths, then the data. Gaps and lengths are u32 little-endian
            numbers stored as byte planes (all low bytes, then all second
            bytes, ...). Range i starts ``gap[i]`` bytes after the end of
            range i-1 (the first after offset 0); its data is
            ``(target - base) mod 256`` byte by byte, as in bsdiff.

What keeps patches small: the data is the byte-wise difference, so a small
change to an int8 weight is a small number (and unchanged bytes inside a
merged range are zeros); byte planes put the (mostly zero) high bytes of the range table
together, which zstd compresses about 20% better than plain u32 columns and as
well as varints, while numpy still parses them without a loop. Ranges at most
``merge_gap`` unchanged bytes apart are merged, but the default is 0 (only
touching changes form one range): on the digits int8 model, both with 1-7% of
weight bytes nudged at random and between two real consecutive exports (14%
of bytes changed: 4.6 KB unmerged, 5.2 KB with gap 1, 5.4 KB with gap 4; the
full file is 40.5 KB zstd, ``zstd --patch-from`` 11.5 KB), every merge made
the patch larger: zstd codes a range's byte-plane entry in fewer bits than the
unchanged bytes a merge would carry.

``apply_patch`` checks the base hash before it reads the body and the target's
hash after it has built the file, and names what went wrong: PatchBaseMismatch
(another base), PatchError (a truncated or corrupt patch), IntegrityError (the
result is not the target), ArtifactError (too large). The caller then fetches
the full file.

>>> base = bytes(range(256)) * 4
>>> target = bytearray(base); target[10] ^= 1; target[500:504] = b"edge"
>>> patch = make_patch(base, bytes(target))
>>> apply_patch(base, patch, max_size=4096) == target
True
>>> read_header(patch).target_size
1024
>>> apply_patch(bytes(target), patch, max_size=4096)
Traceback (most recent call last):
...
shared.delta.PatchBaseMismatch: patch applies to base 785b0751fc2c…, not to this file (77bf0b2ed36b…)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zstandard

from shared.errors import ArtifactError, IntegrityError

MAGIC = b"ELPT"
FORMAT_VERSION = 1
#: Unchanged bytes between two changed ranges up to which the ranges are merged.
DEFAULT_MERGE_GAP = 0
#: zstd level for the body; bodies are small, so the slow end is affordable.
ZSTD_LEVEL = 19

_HEADER = struct.Struct(">4sBB32s32sQ")
HEADER_SIZE = _HEADER.size
_U32_MAX = 2**32 - 1


class NotPatchable(ArtifactError):
    """Base and target cannot be expressed as a patch (different lengths): ship the full file."""


class PatchError(ArtifactError):
    """A patch is truncated, corrupt or of an unknown format."""


class PatchBaseMismatch(IntegrityError):
    """A patch was made against another base than the bytes it is applied to."""


@dataclass(frozen=True)
class PatchHeader:
    base_sha256: str
    target_sha256: str
    target_size: int
    format_version: int = FORMAT_VERSION


def changed_ranges(
    base: bytes, target: bytes, merge_gap: int = DEFAULT_MERGE_GAP
) -> list[tuple[int, int]]:
    """(start, end) of the ranges where ``target`` differs from ``base``, with
    ranges at most ``merge_gap`` bytes apart merged.

    >>> changed_ranges(b"aaaaaaaa", b"abaaaaba", merge_gap=2)
    [(1, 2), (6, 7)]
    >>> changed_ranges(b"aaaaaaaa", b"abaaaaba", merge_gap=4)
    [(1, 7)]
    """
    if len(base) != len(target):
        raise NotPatchable(
            f"base is {len(base)} bytes and target {len(target)}: "
            "a patch needs equal lengths; ship the full file"
        )
    a = np.frombuffer(base, np.uint8)
    b = np.frombuffer(target, np.uint8)
    diff = np.flatnonzero(a != b)
    if diff.size == 0:
        return []
    # A new range starts where the distance to the previous changed byte exceeds the gap.
    breaks = np.flatnonzero(np.diff(diff) > merge_gap + 1)
    starts = np.concatenate(([diff[0]], diff[breaks + 1]))
    ends = np.concatenate((diff[breaks] + 1, [diff[-1] + 1]))
    return [(int(s), int(e)) for s, e in zip(starts, ends, strict=True)]


def make_patch(
    base: bytes, target: bytes, *, merge_gap: int = DEFAULT_MERGE_GAP, level: int = ZSTD_LEVEL
) -> bytes:
    """A patch that turns ``base`` into ``target``; NotPatchable if their lengths differ."""
    ranges = changed_ranges(base, target, merge_gap)
    if len(target) > _U32_MAX:
        raise NotPatchable(f"target is {len(target)} bytes, over the patch format's 4 GiB")
    a = np.frombuffer(base, np.uint8)
    b = np.frombuffer(target, np.uint8)
    starts = np.array([s for s, _ in ranges], np.int64)
    ends = np.array([e for _, e in ranges], np.int64)
    gaps = starts - np.concatenate(([0], ends[:-1]))
    chunks = [(b[s:e] - a[s:e]).tobytes() for s, e in ranges]  # uint8 wraps: mod 256
    body = b"".join(
        [struct.pack("<I", len(ranges)), _planes(gaps), _planes(ends - starts), *chunks]
    )
    frame = zstandard.ZstdCompressor(
        level=level, write_content_size=True, write_checksum=True
    ).compress(body)
    header = _HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        0,
        hashlib.sha256(base).digest(),
        hashlib.sha256(target).digest(),
        len(target),
    )
    return header + frame


def read_header(patch: bytes) -> PatchHeader:
    """The header of ``patch``; PatchError if it is not one this build reads."""
    if len(patch) < HEADER_SIZE:
        raise PatchError(f"patch is {len(patch)} bytes, shorter than its {HEADER_SIZE}-byte header")
    magic, version, _flags, base, target, size = _HEADER.unpack_from(patch)
    if magic != MAGIC:
        raise PatchError("not an edgeloop patch (bad magic)")
    if version != FORMAT_VERSION:
        raise PatchError(
            f"patch format {version} is not supported (this build reads {FORMAT_VERSION})"
        )
    return PatchHeader(base.hex(), target.hex(), size, version)


def apply_patch(base: bytes, patch: bytes, max_size: int) -> bytes:
    """The target file ``patch`` describes, built from ``base`` and checked by hash."""
    header = read_header(patch)
    if header.target_size > max_size:
        raise ArtifactError(
            f"patch builds a {header.target_size}-byte file, over the {max_size} cap"
        )
    actual = hashlib.sha256(base).hexdigest()
    if actual != header.base_sha256:
        raise PatchBaseMismatch(
            f"patch applies to base {header.base_sha256[:12]}…, not to this file ({actual[:12]}…)"
        )
    if len(base) != header.target_size:  # same hash, other length: only a forged header
        raise PatchError(f"patch says {header.target_size} bytes, its base has {len(base)}")
    gaps, lengths, data = _read_body(patch[HEADER_SIZE:], header.target_size)
    out = np.frombuffer(base, np.uint8).copy()
    ends = np.cumsum(gaps + lengths)
    if len(ends) and ends[-1] > header.target_size:
        raise PatchError(
            f"patch ranges end at byte {ends[-1]}, past the file's {header.target_size}"
        )
    # Every data byte's position in the file, without a loop over the ranges.
    starts = ends - lengths
    data_starts = np.cumsum(lengths, dtype=np.int64) - lengths
    positions = np.arange(len(data), dtype=np.int64) + np.repeat(starts - data_starts, lengths)
    out[positions] += data
    result = out.tobytes()
    got = hashlib.sha256(result).hexdigest()
    if got != header.target_sha256:
        raise IntegrityError(
            f"patched file hashes to {got[:16]}…, the patch promised {header.target_sha256[:16]}…"
        )
    return result


def _read_body(
    frame: bytes, target_size: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """(gaps, lengths, data) of a patch body, refusing anything inconsistent."""
    # Ranges are at least one byte and (merged or not) at least one byte apart,
    # so a sound body is never larger than this; a bigger one is refused unread.
    limit = 4 + 8 * (target_size // 2 + 1) + target_size
    try:
        declared = zstandard.get_frame_parameters(frame).content_size
        # zstandard trusts a declared content size over max_output_size.
        if declared > limit:
            raise PatchError(f"patch body claims {declared} bytes, more than a sound one ({limit})")
        body = zstandard.ZstdDecompressor().decompress(frame, max_output_size=limit)
    except zstandard.ZstdError as e:
        raise PatchError(f"patch body does not decompress: {e}") from e
    if len(body) < 4:
        raise PatchError("patch body is too short to hold its range count")
    (count,) = struct.unpack_from("<I", body)
    table_end = 4 + 8 * count
    if len(body) < table_end:
        raise PatchError(f"patch body is cut short: {count} ranges need {table_end} bytes")
    gaps = _from_planes(body, 4, count)
    lengths = _from_planes(body, 4 + 4 * count, count)
    if count and int(lengths.min()) == 0:
        raise PatchError("patch has an empty range")
    if len(body) - table_end != int(lengths.sum()):
        raise PatchError(
            f"patch data is {len(body) - table_end} bytes, its ranges cover {int(lengths.sum())}"
        )
    return gaps, lengths, np.frombuffer(body, np.uint8, offset=table_end)


def _planes(values: npt.NDArray[np.int64]) -> bytes:
    """u32 little-endian numbers as byte planes: all first bytes, then all second, ..."""
    return values.astype("<u4").view(np.uint8).reshape(-1, 4).T.tobytes()


def _from_planes(body: bytes, offset: int, count: int) -> npt.NDArray[np.int64]:
    planes = np.frombuffer(body, np.uint8, 4 * count, offset).reshape(4, count)
    return planes.T.copy().view("<u4").ravel().astype(np.int64)
