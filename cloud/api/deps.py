"""Dependencies of the routers, and the validated shapes of path and query parameters."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Query, Request

from cloud.api.metrics import ApiMetrics
from cloud.api.relay import DeviceRelay
from cloud.api.settings import ApiSettings
from cloud.api.tokens import TokenStore
from cloud.api.views.fleet import FleetView
from cloud.api.views.rollouts import RolloutsView
from cloud.api.views.tuf import TufView
from cloud.api.views.versions import VersionsView

#: A model name (shared.keys.check_name).
MODEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
#: A version ref: number (3 or v3), label, or sha256 / a prefix of 6+ hex digits of it.
REF_PATTERN = r"^(?:[vV]?[1-9][0-9]{0,8}|[a-z][a-z0-9_.\-]{0,31}|[0-9a-f]{6,64})$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"
#: A device id, token name or rollout id (shared.keys.check_name).
NAME_PATTERN = MODEL_PATTERN

#: What to do about a parameter that does not match its pattern (the 422's message).
HINTS = {
    "model": "a model name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    "ref": "name a version by number (3 or v3), label (stable) or sha256 (or 6+ hex digits of it)",
    "target": "name a version by number (3 or v3), label (stable) or sha256 (or 6+ hex digits of it)",
    "a": "name a version by number (3 or v3), label (stable) or sha256 (or 6+ hex digits of it)",
    "b": "name a version by number (3 or v3), label (stable) or sha256 (or 6+ hex digits of it)",
    "base": "base is the full sha256 (64 lowercase hex digits) of the version the edge holds",
    "device_id": "a device id is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
    "rollout_id": "a rollout id is the 12 hex digits POST /v1/rollouts answered with",
    "name": "a token name is 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
}


def get_settings(request: Request) -> ApiSettings:
    return request.app.state.settings  # type: ignore[no-any-return]


def get_view(request: Request) -> VersionsView:
    return request.app.state.view  # type: ignore[no-any-return]


def get_fleet(request: Request) -> FleetView:
    return request.app.state.fleet  # type: ignore[no-any-return]


def get_metrics(request: Request) -> ApiMetrics:
    return request.app.state.metrics  # type: ignore[no-any-return]


def get_relay(request: Request) -> DeviceRelay:
    return request.app.state.relay  # type: ignore[no-any-return]


def get_rollouts(request: Request) -> RolloutsView:
    return request.app.state.rollouts  # type: ignore[no-any-return]


def get_tuf(request: Request) -> TufView:
    return request.app.state.tuf  # type: ignore[no-any-return]


def get_tokens(request: Request) -> TokenStore:
    return request.app.state.tokens  # type: ignore[no-any-return]


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
ViewDep = Annotated[VersionsView, Depends(get_view)]
FleetDep = Annotated[FleetView, Depends(get_fleet)]
RelayDep = Annotated[DeviceRelay, Depends(get_relay)]
MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]
RolloutsDep = Annotated[RolloutsView, Depends(get_rollouts)]
TokensDep = Annotated[TokenStore, Depends(get_tokens)]
TufDep = Annotated[TufView, Depends(get_tuf)]

DeviceId = Annotated[str, Path(pattern=NAME_PATTERN, description="device id", examples=["pi-07"])]
RolloutId = Annotated[
    str, Path(pattern=NAME_PATTERN, description="rollout id", examples=["4be0c1f2a9d3"])
]
TokenName = Annotated[str, Path(pattern=NAME_PATTERN, description="token name", examples=["alice"])]

ModelName = Annotated[
    str, Path(pattern=MODEL_PATTERN, description="model name", examples=["digits"])
]
VersionRef = Annotated[
    str,
    Path(
        pattern=REF_PATTERN,
        description="version number (3 or v3), label (latest, stable) or sha256 (6+ hex digits)",
        examples=["3", "latest"],
    ),
]
RefQuery = Annotated[
    str,
    Query(
        pattern=REF_PATTERN,
        description="a version ref, as in the version path",
        examples=["latest"],
    ),
]
Sha256Query = Annotated[
    str,
    Query(
        pattern=SHA256_PATTERN,
        description="sha256 of the version the edge holds",
        examples=["3f1c9a5e7b2d4c6f8a0e1b3d5f7a9c2e4b6d8f0a1c3e5a7b9d2f4c6e8a0b1d3f"],
    ),
]
