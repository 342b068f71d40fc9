"""The cloud REST API's application factory.

``create_app(settings)`` builds everything from the settings it is given (the
Redis client, the registry, the verifier) and nothing at import time, so two
APIs for two fleets can run in one process or one test.

>>> import tempfile
>>> from cloud.api.settings import ApiSettings
>>> app = create_app(ApiSettings(mode="development", fleet="lab", blob_dir=tempfile.gettempdir()))
>>> for path in sorted(app.openapi()["paths"]):
...     print(path)
/healthz
/v1/models
/v1/models/{model}/delta
/v1/models/{model}/diff
/v1/models/{model}/versions
/v1/models/{model}/versions/{ref}
/v1/models/{model}/versions/{ref}/explanation
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis
from fastapi import FastAPI

from cloud.api import errors
from cloud.api.routers import deltas, diffs, health, models, versions
from cloud.api.settings import ApiSettings
from cloud.registry import DirBlobStore, Registry
from cloud.versions_view import VersionsView
from shared.keys import FleetKeys
from shared.signing import Verifier

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Read a fleet's model versions: their signed manifests, the explanation each
version carries (why it exists, what it changed), comparisons of two versions,
and patches from a version an edge holds to a newer one.

Errors are `{"detail": "<message>"}`: 404 for an unknown model or version, 409
when no patch is possible (fetch the full file), 422 for a malformed parameter,
503 when the registry is unreachable.
"""


def create_app(settings: ApiSettings) -> FastAPI:
    """The API for ``settings.fleet``; ConfigError if the public key cannot be read."""
    assert settings.public_key is not None and settings.blob_dir is not None  # settings fill them
    verifier = _verifier(settings)
    client = redis.Redis.from_url(settings.redis_url)
    registry = Registry(client, FleetKeys(settings.fleet), DirBlobStore(settings.blob_dir))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        client.close()

    app = FastAPI(title="edgeloop cloud", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.view = VersionsView(registry, verifier)
    errors.install(app)
    for module in (models, versions, diffs, deltas, health):
        app.include_router(module.router)
    return app


def _verifier(settings: ApiSettings) -> Verifier | None:
    assert settings.public_key is not None
    if settings.mode == "development" and not settings.public_key.exists():
        logger.warning(
            "development mode: no public key at %s; manifests are served unverified",
            settings.public_key,
        )
        return None
    return Verifier.from_file(settings.public_key)
