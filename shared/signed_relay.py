"""What an edge without Redis sends the API to relay: its stream entries exactly as it
would XADD them, with its device signature, so that the API only carries them.

An enrolled edge signs each feedback stream entry and each status report with its
device key (``shared.device_identity``). Over Redis the signature travels in the entry's
``device`` and ``sig`` fields; over HTTP the same three things (the payload bytes, the
device id, the 64 signature bytes) travel in these models, base64 in JSON, and the API
writes them to the same keys unchanged: it never re-signs, and the trainer's ingest and
the rollout gates verify them as they verify an edge's own writes.

An edge without a device key (a development fleet, no enrolled device) sends the same
entries without ``device`` and ``sig``: the API then checks that each event in them is
the token's device's, as its JSON relay does.

>>> entry = RelayedEntry(payload=b"frames", device="pi-07", sig=bytes(64))
>>> body = RelayedFeedback(entries=[entry]).model_dump_json()
>>> RelayedFeedback.model_validate_json(body).entries[0] == entry
True
>>> '"payload":"ZnJhbWVz"' in body
True
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.messages import SCHEMA_VERSION, B64Bytes

#: Entries one request may carry (an uplink batch splits into several requests).
MAX_ENTRIES = 1000
#: A signature is Ed25519's: 64 bytes.
SIG_BYTES = 64


class RelayedEntry(BaseModel):
    """One feedback stream entry as an edge would XADD it: the payload field (``frames``,
    as the uplink writes; ``events``, JSON lines) and, from an enrolled device, its id
    and its signature of the payload."""

    model_config = ConfigDict(extra="forbid")

    field: Literal["frames", "events"] = "frames"
    payload: B64Bytes = Field(min_length=1, description="the field's exact bytes (base64)")
    device: str | None = Field(None, description="the signing device's id", examples=["pi-07"])
    sig: B64Bytes | None = Field(
        None, description="the device's Ed25519 signature of the payload (base64, 64 bytes)"
    )

    @model_validator(mode="after")
    def _signed_whole(self) -> RelayedEntry:
        if (self.device is None) != (self.sig is None):
            raise ValueError("device and sig go together: give both (signed) or neither")
        if self.sig is not None and len(self.sig) != SIG_BYTES:
            raise ValueError(f"sig must be {SIG_BYTES} bytes, not {len(self.sig)}")
        return self


class RelayedFeedback(BaseModel):
    """Feedback stream entries of one model, appended in order, all or none."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    entries: list[RelayedEntry] = Field(min_length=1, max_length=MAX_ENTRIES)


class RelayedStatus(BaseModel):
    """One status report as an enrolled edge writes it: the ``EdgeStatus`` JSON bytes it
    signed, its device id and its signature."""

    model_config = ConfigDict(extra="forbid")

    schema_version: int = SCHEMA_VERSION
    payload: B64Bytes = Field(min_length=2, description="the EdgeStatus JSON (base64)")
    device: str = Field(examples=["pi-07"])
    sig: B64Bytes = Field(min_length=SIG_BYTES, max_length=SIG_BYTES)
