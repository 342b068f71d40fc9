"""API access tokens: who holds one and what it may do.

A token is a random string shown once when it is issued; Redis keeps only its
HMAC-SHA256 under a server-side pepper (``cloud/api/tokens.py``), with this record
beside it. The CLI writes records and the REST API reads them, so the record is
a wire message.

A token expires at ``expires_at`` (epoch seconds); one without it never does,
which the API accepts only in development (``cloud/api/tokens.py``).

>>> r = TokenRecord(name="pi-7", role="device", device="pi-7", expires_at=2e9)
>>> TokenRecord.from_wire(r.to_wire()) == r, r.expired(now=2e9), r.expired(now=1e9)
(True, True, False)
"""

from __future__ import annotations

import time
from typing import Literal

from pydantic import Field, model_validator

from shared.messages import WireModel

Role = Literal["admin", "viewer", "device"]

#: admin: rollouts, pins, tokens and every read; viewer: every read;
#: device: feedback and status for the one device its token is bound to.
ROLES: tuple[Role, ...] = ("admin", "viewer", "device")


class TokenRecord(WireModel):
    """What the API knows about a token's holder (never the token itself)."""

    name: str = Field(min_length=1, max_length=64, description="unique; revoke by name")
    role: Role
    device: str | None = Field(None, description="the device a device token may post for")
    created_at: float = Field(default_factory=time.time)
    created_by: str = ""
    expires_at: float | None = Field(None, description="epoch seconds; None: never expires")

    def expired(self, now: float | None = None) -> bool:
        return (
            self.expires_at is not None and (time.time() if now is None else now) >= self.expires_at
        )

    @model_validator(mode="after")
    def _device_iff_device_role(self) -> TokenRecord:
        if (self.role == "device") != (self.device is not None):
            raise ValueError("a device token names exactly one device; other roles name none")
        return self
