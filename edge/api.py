"""The edge's local HTTP API: the daemon's three verbs over FastAPI.

- ``POST /v1/predict``  PredictRequest → PredictResponse (one sample) or
  PredictBatchResponse (a batch ``[N, *input shape]``: N answers)
- ``POST /v1/feedback`` FeedbackRequest → 202 FeedbackAccepted
- ``GET  /v1/health``   EdgeStatus (503 when no model can serve)
- ``POST /v1/models/{name}/predict`` and ``/v1/models/{name}/feedback``: the same
  for each model of an edge that serves several (``EdgeSettings.models``; 404
  naming the served models for another name). ``/v1/predict`` and
  ``/v1/feedback`` answer for the edge's first model, so a one-model edge's
  clients need no name.

A sample travels as JSON (``x``: nested lists of the model's input shape, or a
flat list of its values) or as a binary ``.npy`` body (``Content-Type:
application/x-npy``; the array's shape and dtype travel with it, so uint8 frames
stay uint8), with the other fields as query parameters: ``budget_ms`` for
predict; ``label``, ``target`` (comma-separated numbers) and ``request_id`` for
feedback. An npy body is read with ``allow_pickle=False``. Any other content
type is a 415. A sample of the wrong shape or dtype, or with NaN or infinity, is
a 422 naming the expected shape.

Handlers are ``async def`` and do no I/O: a prediction is a few microseconds of
CPU, cheaper than a hop to the thread pool. Responses are serialised once with
``model_dump_json``, so FastAPI does not re-validate them; ``response_model``
still documents them in the OpenAPI schema. ``/v1/predict``, the hot route, is
a plain ASGI endpoint (``_Predict``).
Named errors become 4xx/5xx with ``{"detail": message}``, never a 500; a body
over ``MAX_BODY_BYTES`` is a 413 before the rest of it is read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, TypeVar
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from edge.daemon import EdgeDaemon
from edge.fallback import Prediction
from edge.serving import ServedModel
from shared.errors import EdgeloopError, InputError, NotFound, Unavailable
from shared.messages import (
    EdgeStatus,
    FeedbackAccepted,
    FeedbackRequest,
    PredictBatchResponse,
    PredictRequest,
    PredictResponse,
)
from shared.tensors import as_batch, read_npy

logger = logging.getLogger(__name__)

JSON = "application/json"
NPY = "application/x-npy"
B = TypeVar("B", bound=BaseModel)


def _error(description: str, example: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {JSON: {"example": {"detail": example}}},
    }


_INPUT_422 = _error(
    "Invalid input",
    "x must have shape [64] (one sample) or [N, 64] (a batch) of float32; got shape [63]",
)
_NO_MODEL_503 = _error("No model can serve", "no model is loaded: the edge cannot serve yet")
_UNSUPPORTED_415 = _error(
    "Neither JSON nor .npy",
    "content type 'text/plain' is not supported: send application/json or application/x-npy (a .npy array)",
)

#: Largest request body the API reads: a sample of the most features PredictRequest
#: allows (65536), written as JSON floats, fits.
MAX_BODY_BYTES = 2 << 20


class BodyTooLarge(EdgeloopError):
    """A request body over MAX_BODY_BYTES (413): refused before the rest is read."""


class UnsupportedMediaType(EdgeloopError):
    """A body that is neither JSON nor .npy (415)."""


#: How long a feedback answer waits for its event's send before it spools it itself
#: (``feedback_ack = "kept"``): a send takes milliseconds unless Redis hangs.
KEPT_WAIT_S = 1.0

#: Status codes of the named errors the daemon raises.
_STATUS: list[tuple[type[EdgeloopError], int]] = [
    (BodyTooLarge, 413),
    (UnsupportedMediaType, 415),
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


_MODEL_404 = _error(
    "This edge does not serve that model",
    "this edge does not serve a model 'x'; it serves 'digits', 'bearing'",
)


def _add_predict(app: FastAPI, daemon: EdgeDaemon) -> None:
    @app.post(
        "/v1/predict",
        response_model=PredictResponse | PredictBatchResponse,
        responses={415: _UNSUPPORTED_415, 422: _INPUT_422, 503: _NO_MODEL_503},
        openapi_extra=_body(PredictRequest, _PREDICT_QUERY),
        summary="Answer one sample, or each sample of a batch (the edge's first model)",
    )
    async def predict() -> None:
        """Documents the route in the OpenAPI schema; never called (see below)."""
        raise NotImplementedError("POST /v1/predict is answered by the _Predict route")

    @app.post(
        "/v1/models/{name}/predict",
        response_model=PredictResponse | PredictBatchResponse,
        responses={404: _MODEL_404, 415: _UNSUPPORTED_415, 422: _INPUT_422, 503: _NO_MODEL_503},
        openapi_extra=_body(PredictRequest, _PREDICT_QUERY),
        summary="Answer one sample, or each sample of a batch, with the model name",
    )
    async def predict_with(name: str) -> None:
        """Documents the route in the OpenAPI schema; never called (see below)."""
        raise NotImplementedError("POST /v1/models/{name}/predict is answered by _Predict")

    # The hot route is answered by a plain ASGI endpoint placed ahead of the
    # FastAPI route above: no Request object, no per-request dependency solving,
    # and no Response object, about 14 µs less per request in process
    # (bench/http.py). Errors it raises go through the app's handlers, so they
    # look like every other route's.
    app.router.routes.insert(0, Route("/v1/predict", _Predict(daemon), methods=["POST"]))
    app.router.routes.insert(
        1, Route("/v1/models/{name}/predict", _Predict(daemon), methods=["POST"])
    )


_FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _error("Unknown or expired request_id", "request_id 'x' is unknown or expired"),
    415: _UNSUPPORTED_415,
    422: _error("Invalid label or input", "label 12 is outside the model's classes 0..9"),
    503: _NO_MODEL_503,
}


def _add_feedback(app: FastAPI, daemon: EdgeDaemon) -> None:
    @app.post(
        "/v1/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses=_FEEDBACK_RESPONSES,
        openapi_extra=_body(FeedbackRequest, _FEEDBACK_QUERY),
        summary="Report the truth (label or target) of an earlier prediction or of a sample "
        "(the edge's first model)",
    )
    async def feedback(request: Request) -> Response:
        return await _feedback(daemon.first, request)

    @app.post(
        "/v1/models/{name}/feedback",
        status_code=202,
        response_model=FeedbackAccepted,
        responses=_FEEDBACK_RESPONSES,
        openapi_extra=_body(FeedbackRequest, _FEEDBACK_QUERY),
        summary="Report the truth of an earlier prediction or of a sample, with the model name",
    )
    async def feedback_with(name: str, request: Request) -> Response:
        # 404 for a model this edge does not serve (404 also for an unknown
        # request_id: the message says which).
        return await _feedback(daemon.served(name), request)


async def _feedback(model: ServedModel, request: Request) -> Response:
    body = await _read_body(request.receive)
    if body is None:
        return Response(status_code=400)  # the client left; nobody reads this
    if _is_npy(request.headers.get("content-type")):
        query = _query(request.url.query.encode())
        accepted, line = model.handle_feedback(
            _int_param(query, "label"),
            request_id=query.get("request_id"),
            x=read_npy(body),
            target=_numbers_param(query, "target"),
        )
    else:
        req = _parse(FeedbackRequest, body)
        accepted, line = model.handle_feedback(
            req.label, request_id=req.request_id, x=req.x, target=req.target
        )
    if model.settings.feedback_ack == "kept":
        await _kept(model, line)
    return Response(accepted.model_dump_json(), status_code=202, media_type=JSON)


async def _kept(model: ServedModel, line: bytes) -> None:
    """Answer once the event is in Redis or the spool (``feedback_ack = "kept"``), so
    that a crash of this process after the answer cannot lose it. A send that has not
    ended after ``KEPT_WAIT_S`` (a Redis that accepts and does not answer holds it up
    to the socket timeout) is not waited for: the event is written to the spool now
    (``keep_now``). Only when the disk refuses that too is the answer given with the
    event in memory alone; the client must not send it again."""
    deadline = time.monotonic() + KEPT_WAIT_S
    while not model.uplink.kept(line):
        if time.monotonic() >= deadline:
            if not model.uplink.keep_now(line):
                logger.warning("feedback answered while only in memory: the disk refuses it")
            return
        await asyncio.sleep(0.002)


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
    """ASGI endpoint of ``POST /v1/predict``: a JSON PredictRequest or an npy body →
    PredictResponse, or PredictBatchResponse for a batch."""

    def __init__(self, daemon: EdgeDaemon) -> None:
        self._daemon = daemon

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = scope.get("path_params", {}).get("name")
        # /v1/models/{name}/predict, or /v1/predict: the first model
        model = self._daemon.first if name is None else self._daemon.served(name)
        body = await _read_body(receive)
        if body is None:
            return  # the client left: nobody to answer
        spec = model.chain.input
        if spec is None:
            raise Unavailable("no model is loaded: the edge cannot serve yet")
        if _is_npy(_header(scope, b"content-type")):
            budget_ms = _float_param(_query(scope.get("query_string", b"")), "budget_ms")
            batch, single = as_batch(read_npy(body), spec)
        else:
            req = _parse(PredictRequest, body)
            budget_ms = req.budget_ms
            batch, single = as_batch(req.x, spec)
        if single:
            payload = _answer(model.predict(batch[0], budget_ms)).model_dump_json()
        else:
            answers = [_answer(p) for p in model.predict_batch(batch, budget_ms)]
            payload = PredictBatchResponse(predictions=answers).model_dump_json()
        headers = [*_JSON_HEADERS, (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": payload.encode()})


def _answer(p: Prediction) -> PredictResponse:
    # pydantic-core builds the model from a dict faster than model_construct does in Python.
    outputs = p.outputs
    if outputs is None:
        probabilities = p.probabilities
        return PredictResponse.model_validate(
            {
                "label": p.label,
                "probabilities": probabilities.tolist() if probabilities is not None else None,
                "model_version": p.model_version,
                "model_sha256": p.model_sha256,
                "request_id": p.request_id,
                "fallback": p.fallback,
                "fallback_reason": p.fallback_reason,
                "latency_ms": p.latency_ms,
                "adapted": p.adapted,
            }
        )
    return PredictResponse.model_validate(
        {
            "outputs": outputs.tolist(),
            "output_names": p.output_names,
            "model_version": p.model_version,
            "model_sha256": p.model_sha256,
            "request_id": p.request_id,
            "fallback": p.fallback,
            "fallback_reason": p.fallback_reason,
            "latency_ms": p.latency_ms,
        }
    )


# -- npy bodies: content type and query parameters ---------------------------------


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


def _is_npy(content_type: str | None) -> bool:
    """True for an npy body, False for JSON (or no content type, as before npy);
    UnsupportedMediaType for anything else."""
    media = (content_type or JSON).split(";", 1)[0].strip().lower()
    if media == NPY:
        return True
    if media in (JSON, ""):
        return False
    raise UnsupportedMediaType(
        f"content type {media!r} is not supported: send {JSON} or {NPY} (a .npy array)"
    )


def _query(raw: bytes) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(raw.decode("latin-1")).items()}


def _int_param(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError as e:
        raise InputError(f"query parameter {name} must be an integer, got {value!r}") from e
    if number < 0:
        raise InputError(f"query parameter {name} must be 0 or more, got {number}")
    return number


def _float_param(query: dict[str, str], name: str) -> float | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError as e:
        raise InputError(f"query parameter {name} must be a number, got {value!r}") from e
    if not number > 0 or number == float("inf"):
        raise InputError(f"query parameter {name} must be a positive number, got {value!r}")
    return number


def _numbers_param(query: dict[str, str], name: str) -> list[float] | None:
    value = query.get(name)
    if value is None:
        return None
    try:
        return [float(v) for v in value.split(",")]
    except ValueError as e:
        raise InputError(
            f"query parameter {name} must be comma-separated numbers, got {value!r}"
        ) from e


_PREDICT_QUERY = [
    {
        "name": "budget_ms",
        "in": "query",
        "required": False,
        "schema": {"type": "number", "exclusiveMinimum": 0},
        "description": "With an application/x-npy body: the latency budget (JSON: budget_ms).",
    }
]

_FEEDBACK_QUERY = [
    {
        "name": "label",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "With an application/x-npy body: the class index (a classifier).",
    },
    {
        "name": "target",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "pattern": r"^[-+0-9.eE]+(,[-+0-9.eE]+)*$"},
        "description": "With an application/x-npy body: a regressor's targets, comma-separated.",
    },
    {
        "name": "request_id",
        "in": "query",
        "required": False,
        "schema": {"type": "string", "maxLength": 100},
        "description": "With an application/x-npy body: the prediction this truth is for.",
    },
]


def _body(model: type[BaseModel], npy_query: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenAPI request body of a handler that parses its body itself (the
    request models are flat, so their schema inlines without references): JSON, or
    a .npy array with the other fields as the query parameters ``npy_query``."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    npy = {"schema": {"type": "string", "format": "binary"}}
    return {
        "requestBody": {"required": True, "content": {JSON: {"schema": schema}, NPY: npy}},
        "parameters": npy_query,
    }


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
