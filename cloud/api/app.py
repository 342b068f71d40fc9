"""The cloud REST API's application factory.

``create_app(settings)`` builds everything from the settings it is given (the
Redis client, the registry, the verifier) and nothing at import time, so two
APIs for two fleets can run in one process or one test.

>>> import tempfile
>>> from cloud.api.settings import ApiSettings
>>> app = create_app(ApiSettings(mode="development", fleet="lab", blob_dir=tempfile.gettempdir()))
>>> for path, ops in sorted(app.openapi()["paths"].items()):
...     print(path, " ".join(sorted(ops)))
/healthz get
/metrics get
/v1/devices get
/v1/devices/{device_id} get
/v1/devices/{device_id}/pin delete put
/v1/devices/{device_id}/status post
/v1/devices/{device_id}/status/signed post
/v1/director/{model}/{device_id} get
/v1/feedback post
/v1/fleet get
/v1/models get
/v1/models/{model}/delta get
/v1/models/{model}/diff get
/v1/models/{model}/feedback post
/v1/models/{model}/feedback/entries post
/v1/models/{model}/versions get
/v1/models/{model}/versions/{ref} get
/v1/models/{model}/versions/{ref}/explanation get
/v1/quarantine get
/v1/quarantine/{device_id}/release post
/v1/rollouts get post
/v1/rollouts/{rollout_id} get
/v1/rollouts/{rollout_id}/abort post
/v1/rollouts/{rollout_id}/pause post
/v1/rollouts/{rollout_id}/promote post
/v1/rollouts/{rollout_id}/resume post
/v1/rollouts/{rollout_id}/rollback post
/v1/tokens get post
/v1/tokens/{name} delete
/v1/tuf/targets/{path} get
/v1/tuf/{name} get

Every route but ``/healthz`` needs a bearer token (``cloud/api/auth.py``).
With ``controller_interval_s`` > 0 the app steps the rollout controller in a
thread from startup to shutdown (``cloud/rollout/loop.py``).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import redis
from fastapi import Depends, FastAPI

from cloud.api import errors, metrics
from cloud.api.auth import AUTH_RESPONSES, require_viewer
from cloud.api.relay import DeviceRelay
from cloud.api.routers import (
    deltas,
    devices,
    diffs,
    director,
    feedback,
    fleet,
    health,
    models,
    pins,
    quarantine,
    rollouts,
    tokens,
    versions,
)
from cloud.api.routers import metrics as metrics_router
from cloud.api.routers import tuf as tuf_router
from cloud.api.settings import ApiSettings
from cloud.api.tokens import TokenStore
from cloud.api.views.fleet import FleetView
from cloud.api.views.rollouts import RolloutsView
from cloud.api.views.tuf import TufView
from cloud.api.views.versions import VersionsView
from cloud.registry.collect import VersionCollector
from cloud.registry.fleet_counts import FleetCounts
from cloud.registry.tuf_repo import TufRepository, tuf_repository
from cloud.registry.versions import DirBlobStore, Registry
from cloud.rollout.controller import RolloutController
from cloud.rollout.director import director_of
from cloud.rollout.loop import ControllerLoop
from shared.keys import FleetKeys
from shared.signing import Verifier

logger = logging.getLogger(__name__)

Lifespan = Callable[[FastAPI], AbstractAsyncContextManager[None]]

DESCRIPTION = """\
A fleet's model versions (signed manifests, explanations, comparisons, patches),
its devices, staged rollouts with health gates, pins, and feedback and status
over HTTP for edges that cannot reach Redis.

Authentication: `Authorization: Bearer <token>` (`edgeloop token issue`).
Roles: `viewer` reads everything; `admin` also starts and steers rollouts, pins
devices and manages tokens; `device` posts feedback and status for the one
device its token names. 401 without a valid token, 403 for the wrong role.

Errors are `{"detail": "<message>"}`: 404 for an unknown model, version, device
or rollout, 409 when the state does not allow the request (no patch possible,
a rollout in progress, an action the rollout's state forbids), 422 for a
malformed parameter or body, 503 when Redis is unreachable.
"""


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for ``settings.fleet``; ConfigError if the public key cannot be read."""
    assert settings.public_key is not None and settings.blob_dir is not None  # settings fill them
    verifier = _verifier(settings)
    client = settings.redis_client()
    keys = FleetKeys(settings.fleet)
    registry = Registry(client, keys, DirBlobStore(settings.blob_dir))
    director = director_of(
        client, keys, settings.director_key, settings.director_ttl_s, settings.director_state
    )
    if director is None and settings.mode == "production":
        logger.warning(
            "no director_key: rollout decisions are unsigned Redis writes, which edges with "
            "director_keys ignore and any writer of the fleet's keys can change"
        )
    controller = RolloutController(client, keys, registry, director=director)
    if settings.mode == "development" and settings.dev_pepper:
        logger.warning(
            "development mode: API tokens are hashed with a fixed, public pepper; "
            "set token_pepper to a secret before this API holds real tokens"
        )

    tuf = tuf_repository(client, keys, None, settings.tuf_online_key)
    collector = VersionCollector.configured(registry, settings)
    lifespan = _lifespan(
        controller, client, settings.controller_interval_s, tuf, settings.tuf_refresh_s, collector
    )
    app = FastAPI(title="edgeloop cloud", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.view = VersionsView(registry, verifier)
    counts = FleetCounts(client, keys)
    app.state.fleet = FleetView(client, keys, registry, director, counts)
    app.state.relay = DeviceRelay(client, keys, counts)
    app.state.tuf = TufView(client, keys)
    app.state.rollouts = RolloutsView(controller, registry)
    app.state.tokens = TokenStore(
        client,
        keys,
        settings.pepper,
        default_ttl_s=settings.token_ttl_s,
        allow_no_expiry=settings.mode == "development",
    )
    app.state.controller_loop = None
    app.state.metrics = metrics.ApiMetrics(
        app.state.fleet, controller, lambda: app.state.controller_loop
    )
    errors.install(app)
    errors.limit_body(app, settings.max_body_bytes)
    metrics.install(app, app.state.metrics)
    _include_routers(app)
    return app


def _lifespan(
    controller: RolloutController,
    client: redis.Redis,
    interval_s: float,
    tuf: TufRepository | None = None,
    tuf_refresh_s: float = 600.0,
    collector: VersionCollector | None = None,
) -> Lifespan:
    """Step the controller in a thread while the app runs (not at all when ``interval_s`` <= 0);
    close the Redis client when it stops."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loop = None
        if interval_s > 0:
            loop = ControllerLoop(
                controller, interval_s, tuf=tuf, tuf_refresh_s=tuf_refresh_s, collector=collector
            )
            loop.start()
        app.state.controller_loop = loop
        try:
            yield
        finally:
            if loop is not None:
                loop.stop()
            client.close()

    return lifespan


def _include_routers(app: FastAPI) -> None:
    reads = [Depends(require_viewer)]
    for module in (models, versions, diffs, deltas):
        app.include_router(module.router, dependencies=reads, responses=AUTH_RESPONSES)
    for module in (fleet, devices, pins, quarantine, rollouts, feedback, tokens, metrics_router):
        app.include_router(module.router, responses=AUTH_RESPONSES)
    for module in (tuf_router, director):  # what an edge without Redis updates from
        app.include_router(module.router, responses=AUTH_RESPONSES)
    app.include_router(health.router)


def _verifier(settings: ApiSettings) -> Verifier | None:
    assert settings.public_key is not None
    if settings.mode == "development" and not settings.public_key.exists():
        logger.warning(
            "development mode: no public key at %s; manifests are served unverified",
            settings.public_key,
        )
        return None
    return Verifier.from_file(settings.public_key)
