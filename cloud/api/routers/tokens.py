"""``/v1/tokens``: API tokens (admin). ``edgeloop token`` does the same against Redis."""

from __future__ import annotations

from fastapi import APIRouter, status

from cloud.api.auth import AdminDep
from cloud.api.deps import TokenName, TokensDep
from cloud.api.errors import error
from cloud.api.schemas import TokenCreate, TokenIssued, TokenPublic, TokensPublic

router = APIRouter(prefix="/v1/tokens", tags=["tokens"])


@router.get("", summary="List tokens")
def list_tokens(tokens: TokensDep, _: AdminDep) -> TokensPublic:
    """Names, roles and devices; never the tokens (only their hashes are stored)."""
    return TokensPublic(tokens=[TokenPublic(**r.model_dump()) for r in tokens.records()])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Issue a token",
    responses={409: error("Name in use", "a token named 'alice' exists; revoke it first")},
)
def create_token(body: TokenCreate, tokens: TokensDep, who: AdminDep) -> TokenIssued:
    """The answer holds the token, shown this once; it expires after ``ttl_s``."""
    record, secret = tokens.issue(body.name, body.role, body.device, by=who.name, ttl_s=body.ttl_s)
    return TokenIssued(**record.model_dump(), token=secret)


@router.delete(
    "/{name}",
    summary="Revoke a token",
    responses={404: error("No such token", "no token named 'bob'")},
)
def delete_token(name: TokenName, tokens: TokensDep, who: AdminDep) -> TokenPublic:
    """The token stops working at the next request, in every API process."""
    return TokenPublic(**tokens.revoke(name, by=who.name).model_dump())
