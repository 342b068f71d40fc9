"""Artifact encoding: zstd compression with a size cap, sha256 naming.

>>> blob = encode_full(b"model bytes" * 10)
>>> decode_full(blob, max_size=1000) == b"model bytes" * 10
True
>>> sha256_hex(b"")[:12]
'e3b0c44298fc'
"""

from __future__ import annotations

import hashlib

import zstandard

from shared.errors import ArtifactError, IntegrityError

#: Level used for artifacts; models are small, so the slow end is affordable.
ZSTD_LEVEL = 19
#: Refuse to inflate anything larger than this unless told otherwise.
DEFAULT_MAX_SIZE = 64 * 1024 * 1024


def sha256_hex(data: bytes) -> str:
    """The lowercase hex sha256 of ``data``: the name of an artifact."""
    return hashlib.sha256(data).hexdigest()


def encode_full(data: bytes, level: int = ZSTD_LEVEL) -> bytes:
    """Compress a whole artifact."""
    return zstandard.ZstdCompressor(level=level, write_content_size=True).compress(data)


def decode_full(blob: bytes, max_size: int = DEFAULT_MAX_SIZE) -> bytes:
    """Inflate an artifact, refusing corrupt frames and anything over ``max_size``."""
    try:
        params = zstandard.get_frame_parameters(blob)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"artifact is not a zstd frame: {e}") from e
    if params.content_size > max_size:
        raise ArtifactError(
            f"artifact inflates to {params.content_size} bytes, over the {max_size} cap"
        )
    try:
        return zstandard.ZstdDecompressor().decompress(blob, max_output_size=max_size)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"artifact does not decompress: {e}") from e


#: A version's name: 64 lowercase hex digits, nothing else (never a path).
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def is_sha256(value: object) -> bool:
    """True for a well-formed version name; anything from the wire is checked with it
    before it names a key or a file.

    >>> is_sha256("ab" * 32), is_sha256("../" + "a" * 61), is_sha256("AB" * 32)
    (True, False, False)
    """
    return (
        isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)
    )


def check_sha256(data: bytes, expected: str, what: str = "artifact") -> None:
    """Raise IntegrityError unless ``data`` hashes to ``expected``."""
    actual = sha256_hex(data)
    if actual != expected:
        raise IntegrityError(f"{what} hashes to {actual[:16]}…, expected {expected[:16]}…")
