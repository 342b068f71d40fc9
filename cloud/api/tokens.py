"""Bearer tokens of the REST API, stored hashed in the fleet's Redis.

A token is ``elt_`` + 43 URL-safe random characters (``secrets.token_urlsafe(32)``,
256 bits), shown once by ``issue``. Redis keeps its HMAC-SHA256 under the API's
``token_pepper`` (a secret outside Redis), so a dump of Redis yields no token and
no offline guessing without the pepper. ``FleetKeys.tokens`` maps digest ->
``TokenRecord``; ``FleetKeys.token_names`` maps name -> digest, so names are
unique and ``revoke`` takes a name. A lookup is one HGET per request: revoking
takes effect on the next request, in every API process.

Every token expires (``ttl_s``; ``DEFAULT_TOKEN_TTL_S`` unless the issuer says
otherwise): a leaked token stops working on its own. A token without an expiry
can be issued, and is accepted, only by a store with ``allow_no_expiry`` (the
API's development mode); a production API answers such a token with 401, as it
does an expired one, each with a message saying what to do.

The CLI (``edgeloop token``) uses this module directly against Redis with the
API's config, which is how the first admin token comes to exist.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

import redis
from redis.client import Pipeline

from shared.errors import EdgeloopError, InputError, MessageError, NotFound
from shared.keys import FleetKeys, check_name
from shared.tokens import ROLES, Role, TokenRecord

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "elt_"
#: A token's lifetime unless its issuer gives one: 90 days.
DEFAULT_TOKEN_TTL_S = 90 * 24 * 3600.0


class TokenError(EdgeloopError):
    """A token cannot be issued or revoked as asked."""


class TokenNotFound(TokenError, NotFound):
    exit_code = 4  # the CLI's "not found"


class TokenConflict(TokenError):
    """A token by that name exists; revoke it first or choose another name."""


class TokenRefused(TokenError):
    """A token that was issued but may not be used (expired, or without an expiry in
    production); the message says which and what to do."""


class TokenStore:
    """Issue, look up, list and revoke one fleet's API tokens."""

    def __init__(
        self,
        client: redis.Redis,
        keys: FleetKeys,
        pepper: bytes,
        *,
        default_ttl_s: float = DEFAULT_TOKEN_TTL_S,
        allow_no_expiry: bool = True,
    ) -> None:
        if not pepper:
            raise ValueError("a token store needs a non-empty pepper")
        self.client = client
        self.keys = keys
        self._pepper = pepper
        self.default_ttl_s = default_ttl_s
        self.allow_no_expiry = allow_no_expiry

    def digest(self, token: str) -> str:
        return hmac.new(self._pepper, token.encode("utf-8"), hashlib.sha256).hexdigest()

    def issue(
        self,
        name: str,
        role: str,
        device: str | None = None,
        by: str = "cli",
        *,
        ttl_s: float | None = None,
        never_expires: bool = False,
    ) -> tuple[TokenRecord, str]:
        """A new token for ``name``: its record and the token, which is never stored.

        It expires after ``ttl_s`` seconds (default: the store's ``default_ttl_s``),
        or never with ``never_expires`` where the store allows it."""
        if never_expires and not self.allow_no_expiry:
            raise InputError(
                "tokens without an expiry are for development only: give a lifetime "
                "(--ttl 30d, or ttl_s)"
            )
        if ttl_s is not None and ttl_s <= 0:
            raise InputError(f"a token's lifetime must be positive, not {ttl_s}s")
        expires_at = None if never_expires else time.time() + (ttl_s or self.default_ttl_s)
        record = _record(name, role, device, by).model_copy(update={"expires_at": expires_at})
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        digest = self.digest(token)

        def txn(pipe: Pipeline) -> None:
            if pipe.hexists(self.keys.token_names, name):
                raise TokenConflict(f"a token named {name!r} exists; revoke it first")
            pipe.multi()
            pipe.hset(self.keys.token_names, name, digest)
            pipe.hset(self.keys.tokens, digest, record.to_wire())

        self.client.transaction(txn, self.keys.token_names)
        logger.info("token %r (%s) issued by %s", name, role, by)
        return record, token

    def lookup(self, token: str) -> TokenRecord | None:
        """The holder of ``token``, or None if it was never issued or is revoked."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 200:
            return None
        raw = self.client.hget(self.keys.tokens, self.digest(token))
        if raw is None:
            return None
        try:
            return TokenRecord.from_wire(raw)
        except MessageError:
            logger.warning("an unreadable token record; treating the token as unknown")
            return None

    def authenticate(self, token: str) -> TokenRecord | None:
        """The holder of ``token`` if it may be used now; None if unknown or revoked;
        TokenRefused if it expired (or has no expiry where that is not allowed)."""
        record = self.lookup(token)
        if record is None:
            return None
        if record.expires_at is None and not self.allow_no_expiry:
            raise TokenRefused(
                f"the bearer token {record.name!r} has no expiry, which only a development "
                "API accepts: issue a new one with `edgeloop token issue --ttl DURATION`"
            )
        if record.expired():
            when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record.expires_at))
            raise TokenRefused(
                f"the bearer token {record.name!r} expired at {when}: issue a new one "
                "with `edgeloop token issue --ttl DURATION`"
            )
        return record

    def records(self) -> list[TokenRecord]:
        """Every token of the fleet, oldest first (unreadable records left out)."""
        out = []
        for raw in self.client.hvals(self.keys.tokens):
            try:
                out.append(TokenRecord.from_wire(raw))
            except MessageError:
                continue
        return sorted(out, key=lambda r: (r.created_at, r.name))

    def revoke(self, name: str, by: str = "cli") -> TokenRecord:
        out: dict[str, TokenRecord] = {}

        def txn(pipe: Pipeline) -> None:
            digest = pipe.hget(self.keys.token_names, name)
            if digest is None:
                raise TokenNotFound(f"no token named {name!r}")
            raw = pipe.hget(self.keys.tokens, digest)
            pipe.multi()
            pipe.hdel(self.keys.token_names, name)
            pipe.hdel(self.keys.tokens, digest)
            if raw is not None:
                out["r"] = TokenRecord.from_wire(raw)

        self.client.transaction(txn, self.keys.token_names)
        logger.info("token %r revoked by %s", name, by)
        return out.get("r") or TokenRecord(name=name, role="viewer")


def _record(name: str, role: str, device: str | None, by: str) -> TokenRecord:
    try:
        check_name("token name", name)
        if device is not None:
            check_name("device id", device)
    except ValueError as e:
        raise InputError(str(e)) from e
    known = _role(role)
    if (role == "device") != (device is not None):
        raise InputError(
            "a device token needs --device ID (the one device it may post for)"
            if role == "device"
            else f"only device tokens name a device, not {role} tokens"
        )
    return TokenRecord(name=name, role=known, device=device, created_by=by)


def _role(name: str) -> Role:
    for role in ROLES:
        if name == role:
            return role
    raise InputError(f"unknown role {name!r}: use one of {', '.join(ROLES)}")
