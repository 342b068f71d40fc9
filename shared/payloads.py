"""A version's payload as the wire carries it, made back into its model file: the one
implementation, used by the edge's updater and by the simulated devices
(``cloud.simulate``)."""

from __future__ import annotations

from shared.codec import decode_full
from shared.delta import apply_patch
from shared.errors import ArtifactError
from shared.messages import Payload


def payload_bound(size: int) -> int:
    """The most bytes a payload (zstd frame or patch) of a ``size``-byte model may take:
    zstd's worst case for incompressible data, plus headers.

    >>> payload_bound(1000)
    66543
    """
    return size + (size >> 7) + 65536


def materialize(payload: Payload, blob: bytes, base: bytes | None, max_size: int) -> bytes:
    """The model file a payload describes.

    ``full`` payloads are zstd frames. ``patch`` payloads (``shared.delta``) apply
    to ``base``, the bytes of the version named by ``payload.base_sha256``.
    """
    if payload.encoding == "full":
        return decode_full(blob, max_size)
    if payload.encoding == "patch":
        if base is None:
            raise ArtifactError("a patch payload needs the bytes of its base")
        return apply_patch(base, blob, max_size)
    raise ArtifactError(f"{payload.encoding} payloads are not supported by this edge")
