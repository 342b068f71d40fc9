"""Who may call what: bearer tokens with roles (``cloud/api/tokens.py`` keeps them).

- ``viewer``: every read; ``admin``: every read, rollouts, pins and tokens;
- ``device``: ``POST /v1/feedback`` and ``POST /v1/devices/{id}/status`` for the
  one device its token is bound to (an admin may post for any device), and what an
  edge reads to update itself: ``/v1/tuf/...`` and its own ``/v1/director/...``.

No token, or one that is unknown, revoked or expired (or, in production, one
without an expiry): 401 with ``WWW-Authenticate: Bearer`` and a message saying
which. A valid token of the wrong role (or device): 403.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud.api.deps import get_tokens
from cloud.api.errors import Responses, error
from cloud.api.tokens import TokenRefused
from shared.tokens import Role, TokenRecord

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `edgeloop token issue` (or POST /v1/tokens): "
    "`Authorization: Bearer elt_...`",
)

UNAUTHORIZED = error("No token, or an unknown or revoked one", "a bearer token is required")
FORBIDDEN = error(
    "The token's role may not do this", "this needs the admin role; the token is viewer"
)
AUTH_RESPONSES: Responses = {401: UNAUTHORIZED, 403: FORBIDDEN}


def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> TokenRecord:
    if credentials is None:
        raise HTTPException(
            401,
            "a bearer token is required: Authorization: Bearer <token from edgeloop token issue>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    try:
        record = get_tokens(request).authenticate(credentials.credentials)
    except TokenRefused as e:
        raise HTTPException(
            401, str(e), headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
        ) from e
    if record is None:
        raise HTTPException(
            401,
            "the bearer token is unknown or revoked",
            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
        )
    return record


PrincipalDep = Annotated[TokenRecord, Depends(get_principal)]


def _require(*roles: Role) -> Callable[[TokenRecord], TokenRecord]:
    def check(principal: PrincipalDep) -> TokenRecord:
        if principal.role not in roles:
            raise HTTPException(
                403, f"this needs the {' or '.join(roles)} role; the token is {principal.role}"
            )
        return principal

    return check


require_viewer = _require("viewer", "admin")
require_admin = _require("admin")
#: What an edge reads to update itself (signed TUF files, director orders): every role.
require_reader = _require("viewer", "admin", "device")

ViewerDep = Annotated[TokenRecord, Depends(require_viewer)]
AdminDep = Annotated[TokenRecord, Depends(require_admin)]
ReaderDep = Annotated[TokenRecord, Depends(require_reader)]


def check_reads_device(principal: TokenRecord, device_id: str) -> None:
    """A device token may read what concerns its own device only; viewer and admin any."""
    if principal.role == "device" and principal.device != device_id:
        raise HTTPException(
            403, f"this token may read for device {principal.device!r} only, not {device_id!r}"
        )


def check_device(principal: TokenRecord, device_id: str) -> None:
    """A device token may act for its own device only; an admin for any."""
    if principal.role == "admin":
        return
    if principal.role != "device":
        raise HTTPException(
            403, f"this needs a device token (or admin); the token is {principal.role}"
        )
    if principal.device != device_id:
        raise HTTPException(
            403, f"this token may post for device {principal.device!r} only, not {device_id!r}"
        )
