"""Where the files of a fleet's TUF repository live in Redis.

The cloud's repository (cloud/registry/tuf_repo.py) and the edge's fetcher
(edge/tuf_client.py) name files by TUF paths; both map them to Redis keys here,
so that the two sides can never disagree. Everything else about TUF stays out
of ``shared``: the library is in the ``edge`` and ``cloud`` extras.

- metadata: ``root.json`` (the newest), ``N.root.json`` (every root version, for
  the chain an edge walks), ``targets.json``, ``snapshot.json``, ``timestamp.json``
  at ``FleetKeys.tuf_metadata(name)``;
- target files: ``artifacts/<sha256>`` is a version's zstd file at
  ``FleetKeys.artifact(sha256)``; ``patches/<base>/<sha256>`` a patch at
  ``FleetKeys.patch(base, sha256)``.

>>> keys = FleetKeys("lab")
>>> target_key(keys, artifact_path("ab" * 32)) == keys.artifact("ab" * 32)
True
>>> target_key(keys, "../etc/passwd")
Traceback (most recent call last):
...
shared.errors.IntegrityError: not a target path of this repository: '../etc/passwd'
"""

from __future__ import annotations

import re

from shared.errors import IntegrityError
from shared.keys import FleetKeys

#: The metadata files a repository holds (besides the numbered roots).
METADATA_NAMES = ("root.json", "targets.json", "snapshot.json", "timestamp.json")

#: The root's custom field naming the director's keys (Uptane's director role, for
#: which TUF's root has no slot): ``{"keys": {keyid: TUF key dict}, "threshold": 1}``.
#: It is signed with the root, so edges take the director keys from the root chain
#: they already follow, and rotating the director key edits no device.
DIRECTOR_FIELD = "x-edgeloop-director"

_SHA = "[0-9a-f]{64}"
_ARTIFACT = re.compile(rf"^artifacts/({_SHA})$")
_PATCH = re.compile(rf"^patches/({_SHA})/({_SHA})$")
_META = re.compile(r"^(?:[1-9][0-9]{0,8}\.root|root|targets|snapshot|timestamp)\.json$")


def artifact_path(sha256: str) -> str:
    """The TUF target path of a version's full (zstd) file."""
    return f"artifacts/{sha256}"


def patch_path(base_sha256: str, sha256: str) -> str:
    """The TUF target path of the patch from ``base_sha256`` to ``sha256``."""
    return f"patches/{base_sha256}/{sha256}"


def target_key(keys: FleetKeys, path: str) -> str:
    """The Redis key of target file ``path``; IntegrityError for any other path."""
    if m := _ARTIFACT.match(path):
        return keys.artifact(m.group(1))
    if m := _PATCH.match(path):
        return keys.patch(m.group(1), m.group(2))
    raise IntegrityError(f"not a target path of this repository: {path!r}")


def metadata_key(keys: FleetKeys, name: str) -> str:
    """The Redis key of metadata file ``name``; IntegrityError for any other name."""
    if not _META.match(name):
        raise IntegrityError(f"not a metadata file of this repository: {name!r}")
    return keys.tuf_metadata(name)
