"""The edge's local HTTP API: the daemon's three verbs over FastAPI.

- ``POST /v1/predict``  PredictRequest → PredictResponse
- ``POST /v1/feedback`` FeedbackRequest → 202 FeedbackAccepted
- ``GET  /v1/health``   EdgeStatus (503 when no model can serve)

Handlers are ``async def`` and do no I/O: a prediction is a few microseconds of
CPU, cheaper than a hop to the thread pool. Responses are serialised once with
``model_dump_json``, so FastAPI does not re-validate them; ``response_model``
still documents them in the OpenAPI schema. ``/v1/predict``, the hot route, is
a plain ASGI endpoint (``_Predict``).
Named errors become 4xx/5xx with ``{"detail": message}``, never a 500; a body
over ``MAX_BODY_BYTES`` is a 413 before the rest of it is read.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge.daemon import EdgeDaemon
from shared.errors import EdgeloopError, InputError, NotFound, Unavailable
from shared.messages import (
    EdgeStatus,
    FeedbackAccepted,
    FeedbackRequest,
    PredictRequest,
    PredictResponse,
)

logger = logging.getLogger(__name__)

JSON = "application/json"
B = TypeVar("B", bound=BaseModel)


def _error(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"example": {"detail": example}}},
    }


_INPUT_422 = _error("Invalid input", "expected 64 features, got 63")
_NO_MODEL_503 = _error("No model can serve", "no model is loaded: the edge cannot serve yet")

#: Largest request body the API reads: a sample of the most features PredictRequest
#: allows (65536), written as JSON floats, fits.
MAX_BODY_BYTES = 2 << 20


class BodyTooLarge(EdgeloopError):
    """A request body over MAX_BODY_BYTES (413): refused before the rest is read."""


#: Status codes of the named errors the daemon raises.
_STATUS: list[tuple[type[EdgeloopError], int]] = [
    (BodyTooLarge, 413),
    (InputError, 422),
    (NotFound, 404),
    (Unavailable, 503),
]


def create_app(daemon: EdgeDaemon) -> FastAPI:
    """The HTTP API of ``daemon`` (already started by the caller)."""
    app = FastAPI(
        title="edgeloop edge",
        version="1",
        description="Local prediction, feedback and health of one edgeloop edge device.",
        # The edge reports its metrics in its status, not through OpenTelemetry; with
        # telemetry off FastAPI skips its per-request provider lookups (bench/http.py).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.daemon = daemon
    for exc_type, status in _STATUS:
        app.add_exception_handler(exc_type, _handler(status))
    _add_predict(app, daemon)
    _add_feedback(app, daemon)
    _add_health(app, daemon)
    return app


def _add_predict(app: FastAPI, daemon: EdgeDaemon) -> None:
    @app.post(
        "/v1/predict",
        response_model=PredictResponse,
        responses={422: _INPUT_422, 503: _NO_MODEL_503},
        openapi_extra=_body(PredictRequest),
        summary="Classify one sample",
    )
    async def predict() -> None:
        """Documents the route in the OpenAPI schema; never called (see below)."""
        raise NotImplementedError("POST /v1/predict is answered by the _Predict route")

    # The hot route is answered by a plain ASGI endpoint placed ahead of the
    # FastAPI route above: no Request object, no per-request dependency solving,
    # and no Response object, about 14 µs less per request in process
    # (bench/http.py). Errors it raises go through the app's handlers, so they
    # look like every other route's.
    app.router.routes.insert(0, Route("/v1/predict", _Predict(daemon), methods=["POST"]))


def _add_feedback(app: FastAPI, daemon: EdgeDaemon) -> None:
    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses={
            404: _error("Unknown or expired request_id", "request_id 'x' is unknown or expired"),
            422: _error("Invalid label or input", "label 12 is outside the model's classes 0..9"),
            503: _NO_MODEL_503,
        },
        openapi_extra=_body(FeedbackRequest),
        summary="Report the true label of an earlier prediction (or of an input)",
    )
    async def feedback(request: Request) -> Response:
        body = await _read_body(request.receive)
        if body is None:
            return Response(status_code=400)  # the client left; nobody reads this
        req = _parse(FeedbackRequest, body)
        if req.label is None:
            raise InputError("label is required: this edge serves a classifier")
        accepted = daemon.feedback(req.label, request_id=req.request_id, x=req.x)
        return Response(accepted.model_dump_json(), status_code=202, media_type=JSON)


def _add_health(app: FastAPI, daemon: EdgeDaemon) -> None:
    @app.get(
        "/v1/health",
        response_model=EdgeStatus,
        responses={
            503: {
                "description": "No model can serve; the body is still the status",
                "model": EdgeStatus,
            }
        },
        summary="This edge's status",
    )
    async def health() -> Response:
        status = daemon.health()
        code = 200 if daemon.can_serve else 503
        return Response(status.model_dump_json(), status_code=code, media_type=JSON)


_JSON_HEADERS = [(b"content-type", b"application/json")]


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when the client disconnected first; BodyTooLarge
    as soon as it passes MAX_BODY_BYTES, before the rest is read."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLarge(
                f"request body over {MAX_BODY_BYTES} bytes; send one sample per request"
            )
        if not message.get("more_body"):
            return b"".join((*chunks, chunk)) if chunks else chunk
        chunks.append(chunk)


class _Predict:
    """ASGI endpoint of ``POST /v1/predict``: PredictRequest → PredictResponse."""

    def __init__(self, daemon: EdgeDaemon) -> None:
        self._daemon = daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive)
        if body is None:
            return  # the client left: nobody to answer
        req = _parse(PredictRequest, body)
        with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
            x = np.array(req.x, dtype=np.float32)
        if not np.isfinite(x).all():
            raise InputError(
                "features must be finite float32 numbers (got NaN, infinity or overflow)"
            )
        p = self._daemon.predict(x, req.budget_ms)
        # pydantic-core builds the model from a dict faster than model_construct does in Python.
        payload = PredictResponse.model_validate(
            {
                "label": p.label,
                "probabilities": p.probabilities.tolist(),
                "model_version": p.model_version,
                "model_sha256": p.model_sha256,
                "request_id": p.request_id,
                "fallback": p.fallback,
                "fallback_reason": p.fallback_reason,
                "latency_ms": p.latency_ms,
            }
        ).model_dump_json()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload.encode()})


def _body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a handler that parses its body itself (the
    request models are flat, so their schema inlines without references)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def _parse(model: type[B], raw: bytes) -> B:
    """Validate a JSON body with pydantic-core's own parser, which is several
    times cheaper per request than FastAPI's parameter machinery; errors look
    the same as FastAPI's (422, ``detail`` a list with ``loc`` from "body")."""
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        errors = [
            {**err, "loc": ("body", *err["loc"])}
            for err in e.errors(include_url=False, include_context=False)
        ]
        raise RequestValidationError(errors) from e


def _handler(status: int) -> Any:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if status >= 500:
            logger.warning("%s %s -> %d: %s", request.method, request.url.path, status, exc)
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle
