"""Director orders (Uptane's director repository, reduced to what edgeloop needs).

The trainer may publish versions (TUF targets); it may not decide what devices
run. A director order, signed by the rollout controller's key (never the
trainer's), names for one device or the whole fleet the version of a model to
serve, with a counter and an expiry:

- an edge serves only a version both the TUF targets and a director order name;
- it keeps the highest counter it has accepted and refuses any lower one (a
  replayed old order), so a legitimate rollback is a *new*, higher-counter order
  naming an older version;
- an expired order is not followed for a change, and the edge reports ``stale``.

Orders live in the hash ``FleetKeys.director(model)``, one field per scope
(``device:<id>`` or ``fleet``); the counter is one per model
(``FleetKeys.director_counter``), so an order for a device and one for the
fleet are ordered against each other and the device's own wins when both exist
at the same or a higher counter.

>>> from shared.signing import Signer, Verifier, generate_keypair
>>> private, public = generate_keypair()
>>> order = DirectorOrder(fleet="lab", model="digits", scope="fleet", sha256="a" * 64,
...                       counter=3, expires=2e9)
>>> signed = sign_order(Signer(private), order)
>>> verify_order(signed, [Verifier(public)]).counter
3
"""

from __future__ import annotations

import re
import time

from pydantic import BaseModel, Field, field_validator

from shared.errors import IntegrityError, SignatureError
from shared.messages import Signature, WireModel
from shared.signing import Signer, Verifier

__all__ = [
    "FLEET_SCOPE",
    "DirectorOrder",
    "OrderRefused",
    "SignedOrder",
    "device_scope",
    "sign_order",
    "verify_order",
]

FLEET_SCOPE = "fleet"
_SCOPE = re.compile(r"^(fleet|device:[A-Za-z0-9_.:\-]{1,128})$")
_SHA = re.compile(r"^[0-9a-f]{64}$")


class OrderRefused(IntegrityError):
    """A director order that does not verify, is for someone else, or is older than one seen."""


def device_scope(device_id: str) -> str:
    return f"device:{device_id}"


class DirectorOrder(BaseModel):
    fleet: str
    model: str
    scope: str = Field(description='"fleet" or "device:<id>"')
    sha256: str = Field(description="the version to serve")
    counter: int = Field(ge=1, description="higher than every earlier order of this model")
    expires: float = Field(description="unix time after which the order is stale")

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if not _SCOPE.match(v):
            raise ValueError('scope must be "fleet" or "device:<id>"')
        return v

    @field_validator("sha256")
    @classmethod
    def _sha(cls, v: str) -> str:
        if not _SHA.match(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v

    def expired(self, now: float | None = None) -> bool:
        return (time.time() if now is None else now) >= self.expires


class SignedOrder(WireModel):
    """An order as it travels: the exact JSON that was signed, and the signature."""

    order_json: str
    signature: Signature

    def order(self) -> DirectorOrder:
        return DirectorOrder.model_validate_json(self.order_json)


def sign_order(signer: Signer, order: DirectorOrder) -> SignedOrder:
    text = order.model_dump_json()
    return SignedOrder(order_json=text, signature=signer.sign(text.encode("utf-8")))


def verify_order(signed: SignedOrder, trusted: list[Verifier]) -> DirectorOrder:
    """The order if one of the ``trusted`` director keys signed it; OrderRefused if none."""
    data = signed.order_json.encode("utf-8")
    errors: list[str] = []
    for verifier in trusted:
        try:
            verifier.verify(data, signed.signature)
        except SignatureError as e:
            errors.append(str(e))
            continue
        try:
            return signed.order()
        except ValueError as e:
            raise OrderRefused(f"director order does not parse: {e}") from e
    raise OrderRefused(
        "director order not signed by a trusted director key: " + ("; ".join(errors) or "none")
    )
