"""``/v1/tuf``: the fleet's TUF repository for edges without Redis (their ngclient Updater's
metadata and target base URLs). Read-only; any token (a device's too): every file is signed."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from cloud.api.auth import ReaderDep
from cloud.api.deps import TufDep
from cloud.api.errors import error

router = APIRouter(prefix="/v1/tuf", tags=["tuf"])

JSON = "application/json"
OCTETS = "application/octet-stream"
#: A metadata file name (shared/tuf_paths.py's, which the view checks again).
METADATA_PATTERN = r"^(?:[1-9][0-9]{0,8}\.root|root|targets|snapshot|timestamp)\.json$"
#: A target path: a version's file or a patch.
TARGET_PATTERN = r"^(?:artifacts/[0-9a-f]{64}|patches/[0-9a-f]{64}/[0-9a-f]{64})$"
#: Signed files change with every publish and re-sign: never from a cache.
NO_STORE = {"Cache-Control": "no-store"}

MetadataName = Annotated[
    str,
    Path(
        pattern=METADATA_PATTERN,
        description="root.json, N.root.json, timestamp.json, snapshot.json or targets.json",
        examples=["timestamp.json", "2.root.json"],
    ),
]
TargetPath = Annotated[
    str,
    Path(
        pattern=TARGET_PATTERN,
        description="artifacts/<sha256> or patches/<base sha256>/<sha256>",
        examples=["artifacts/3f1c9a5e7b2d4c6f8a0e1b3d5f7a9c2e4b6d8f0a1c3e5a7b9d2f4c6e8a0b1d3f"],
    ),
]
NOT_HELD = error(
    "Not in the repository", "metadata 3.root.json is not in fleet default's repository"
)


@router.get(
    "/targets/{path:path}",
    summary="Get a target file",
    response_class=Response,
    responses={
        200: {
            "description": "The file's bytes (a version's zstd file or a patch), as listed in "
            "the signed targets with their length and hashes",
            "content": {OCTETS: {"schema": {"type": "string", "format": "binary"}}},
        },
        404: NOT_HELD,
    },
)
def read_target(path: TargetPath, tuf: TufDep, _: ReaderDep) -> Response:
    return Response(tuf.target(path), media_type=OCTETS, headers=NO_STORE)


@router.get(
    "/{name}",
    summary="Get a TUF metadata file",
    response_class=Response,
    responses={
        200: {
            "description": "The signed metadata file, as stored",
            "content": {JSON: {"schema": {"type": "object"}}},
        },
        404: NOT_HELD,
    },
)
def read_metadata(name: MetadataName, tuf: TufDep, _: ReaderDep) -> Response:
    return Response(tuf.metadata(name), media_type=JSON, headers=NO_STORE)
