"""Named errors to HTTP answers: always ``{"detail": "<one line>"}``, 4xx for anything a client did.

- unknown model, version or base → 404; a sha256 prefix of several versions,
  no patch possible, or a version whose file does not load in this runtime → 409;
- a malformed path or query → 422 naming the parameter and what a good one looks like;
- a rollout action the rollout's state does not allow, or a second rollout of
  a model, or a token name in use → 409; a request the state makes impossible
  (no device to roll out to, an event id of another device) → 422;
- the registry's Redis unreachable → 503 (retry later);
- a command the Redis refuses (a user without the permission, a cluster that is down
  or mid-failover, a replica that is read-only, a disk that stops writes) → 503 naming
  the refusal: it is the deployment's to fix or wait out, not the client's.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud.api.deps import HINTS
from cloud.api.schemas import ErrorPublic
from cloud.api.tokens import TokenConflict
from cloud.registry.versions import AmbiguousRef, PatchUnavailable
from cloud.rollout.controller import RolloutConflict
from shared.errors import InputError, ModelRejected, NotFound
from shared.replies import REDIS_DOWN

logger = logging.getLogger(__name__)

_STATUS: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (AmbiguousRef, 409),  # a VersionNotFound: the handler of the most specific class wins
    (PatchUnavailable, 409),
    (ModelRejected, 409),
    (RolloutConflict, 409),
    (TokenConflict, 409),
    (InputError, 422),
]


#: FastAPI's ``responses=``: an OpenAPI response entry by status code.
Responses = dict[int | str, dict[str, Any]]


def error(description: str, example: str) -> dict[str, Any]:
    """An OpenAPI response entry for an error, with an example body."""
    return {
        "model": ErrorPublic,
        "description": description,
        "content": {"application/json": {"example": {"detail": example}}},
    }


def install(app: FastAPI) -> None:
    for exc_type, status in _STATUS:
        app.add_exception_handler(exc_type, _named(status))
    app.add_exception_handler(RequestValidationError, _invalid)
    for down in REDIS_DOWN:  # one server down, or a cluster during a failover
        app.add_exception_handler(down, _unavailable)
    app.add_exception_handler(redis.ResponseError, _refused)


def _named(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle


async def _invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    err = exc.errors()[0]
    loc = [str(p) for p in err.get("loc", ())]
    name = loc[-1] if loc else "request"
    where = f"{loc[0]} parameter {name!r}" if len(loc) > 1 else name
    hint = (
        HINTS.get(name)
        if err.get("type") in ("string_pattern_mismatch", "string_too_long")
        else None
    )
    return JSONResponse(
        {"detail": f"{where}: {hint or err.get('msg', 'invalid')}"}, status_code=422
    )


def limit_body(app: FastAPI, max_bytes: int) -> None:
    """Refuse a body over ``max_bytes`` with 413 before any route (or its auth) reads it."""
    app.add_middleware(BodyLimit, max_bytes=max_bytes)


class BodyLimit:
    """ASGI middleware: a request body is at most ``max_bytes``, declared or not.

    A declared ``Content-Length`` over the cap is refused before a byte is read
    (the server enforces the declared length). A body without one (chunked) is
    read here, at most the cap, before the app sees any of it: one byte more and
    the answer is 413, the rest never read; otherwise the app gets the same
    messages. Routes read a body whole anyway, so buffering it costs nothing extra.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        buffered: list[Message] = []
        size = 0
        while True:
            message = await receive()
            buffered.append(message)
            if message["type"] != "http.request":
                break  # a disconnect: the app sees it in turn
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                logger.info("refused a chunked body over %d bytes", self.max_bytes)
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return buffered.pop(0) if buffered else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"the request body is over {self.max_bytes} bytes: send smaller batches"},
            status_code=413,
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


async def _refused(request: Request, exc: Exception) -> JSONResponse:
    why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    logger.warning("Redis refused a command of %s %s: %s", request.method, request.url.path, why)
    return JSONResponse(
        {"detail": f"the registry's Redis refused a command: {why}"}, status_code=503
    )


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("registry unavailable: %s", exc)
    return JSONResponse({"detail": f"the registry is unavailable: {exc}"}, status_code=503)
