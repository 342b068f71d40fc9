"""The CLI's side of the REST API: where it is, who is asking, and requests that fail
in one clear line.

The base URL comes from ``--api``, else ``EDGELOOP_API_URL``, else ``api_url``
in the client config file (``--config``, default ``~/.config/edgeloop/client.toml``),
else ``http://127.0.0.1:8080``. The bearer token comes from ``EDGELOOP_TOKEN``,
else ``token`` in the same file. An ``https://`` API is verified against ``ca_file``
(``EDGELOOP_CA_FILE``; default: the system's CAs). With ``mode = "production"``
(``EDGELOOP_MODE``, the default) a plain ``http://`` URL is refused unless it is a
loopback address: the token would cross the network in clear.

A failure is an ``ApiError`` whose ``exit_code`` scripts can rely on: 4 when the
API says 404, 5 for 401/403 (no, a bad, or a too weak token), 2 otherwise.

>>> ApiClient("http://api:8080/").url("/v1/models/{}/versions/{}", "digits", "v 2")
'http://api:8080/v1/models/digits/versions/v%202'
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, Field, SecretStr, ValidationError
from pydantic_settings import SettingsConfigDict

from cloud.api.schemas import ModelsPublic
from shared.config import EnvFirstSettings, load_settings
from shared.errors import EdgeloopError
from shared.transport import check_api_url

logger = logging.getLogger(__name__)

DEFAULT_CONFIG = Path("~/.config/edgeloop/client.toml")
M = TypeVar("M", bound=BaseModel)


class ApiError(EdgeloopError):
    """The API could not be reached or refused the request; the message says which and why."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status

    @property
    def exit_code(self) -> int:
        if self.status == 404:
            return 4
        if self.status in (401, 403):
            return 5
        return 2


class ClientSettings(EnvFirstSettings):
    """Settings of the CLI commands that talk to the REST API."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="forbid")

    api_url: str = Field("http://127.0.0.1:8080", description="base URL of the edgeloop REST API")
    timeout_s: float = Field(60.0, gt=0)
    token: SecretStr | None = Field(None, description="bearer token (EDGELOOP_TOKEN)")
    mode: Literal["production", "development"] = Field(
        "production", description="production refuses plain http:// to a remote API"
    )
    ca_file: Path | None = Field(
        None, description="PEM of the CA that signed the API's certificate (https://)"
    )


def client_settings(config: Path | None) -> ClientSettings:
    """The settings from ``config``, else the default file if it exists, plus the environment."""
    if config is None:
        default = DEFAULT_CONFIG.expanduser()
        config = default if default.exists() else None
    return load_settings(ClientSettings, config)


class ApiClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 60.0,
        token: str | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.token = token
        # httpx verifies https certificates; a CA file replaces the system's CAs
        self.verify: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=str(ca_file)) if ca_file is not None else True
        )

    def url(self, template: str, *parts: str) -> str:
        return self.base_url + template.format(*(quote(str(p), safe="") for p in parts))

    def request(
        self,
        method: str,
        template: str,
        *parts: str,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """Send a request and return its JSON body; ApiError with the API's own message on
        any failure."""
        url = self.url(template, *parts)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            r = httpx.request(
                method,
                url,
                params=params,
                json=body,
                headers=headers,
                timeout=self.timeout_s,
                verify=self.verify,
            )
        except httpx.HTTPError as e:
            raise ApiError(
                f"cannot reach the edgeloop API at {self.base_url} ({type(e).__name__}: {e}); "
                "point --api, EDGELOOP_API_URL or api_url in the client config at it"
            ) from e
        if r.status_code >= 400:
            raise self._refusal(r)
        try:
            return r.json()
        except ValueError as e:
            raise ApiError(
                f"{url} did not answer with JSON; is {self.base_url} an edgeloop API?"
            ) from e

    def _refusal(self, r: httpx.Response) -> ApiError:
        """The API's own one-line reason for refusing, with the HTTP status."""
        try:
            detail = r.json()["detail"]
        except (ValueError, KeyError, TypeError):
            detail = r.text.strip()[:200] or r.reason_phrase
        if r.status_code == 401 and not self.token:
            detail += " (set EDGELOOP_TOKEN or token in the client config)"
        return ApiError(f"{detail} (HTTP {r.status_code})", r.status_code)

    # Each verb returns the answer parsed as ``shape`` and the raw JSON (for ``--json``).

    def get_as(self, shape: type[M], template: str, *parts: str, **params: str) -> tuple[M, Any]:
        return self.parse(shape, self.request("GET", template, *parts, params=params or None))

    def post_as(
        self, shape: type[M], template: str, *parts: str, body: Any = None
    ) -> tuple[M, Any]:
        return self.parse(shape, self.request("POST", template, *parts, body=body))

    def put_as(self, shape: type[M], template: str, *parts: str, body: Any) -> tuple[M, Any]:
        return self.parse(shape, self.request("PUT", template, *parts, body=body))

    def delete_as(self, shape: type[M], template: str, *parts: str, **params: str) -> tuple[M, Any]:
        return self.parse(shape, self.request("DELETE", template, *parts, params=params or None))

    @staticmethod
    def parse(shape: type[M], raw: Any) -> tuple[M, Any]:
        try:
            return shape.model_validate(raw), raw
        except ValidationError as e:
            raise ApiError(
                f"the API's answer is not a {shape.__name__} ({e.errors()[0]['msg']}); "
                "are the CLI and the API the same version?"
            ) from e


def api_options(p: argparse.ArgumentParser) -> None:
    """``--api``, ``--config`` and ``--json``: the options of every command that calls the API."""
    p.add_argument(
        "--api", metavar="URL", help="REST API base URL (else EDGELOOP_API_URL or the config)"
    )
    p.add_argument("--config", type=Path, help=f"client config TOML (default {DEFAULT_CONFIG})")
    p.add_argument("--json", action="store_true", help="print the API's JSON on one line")


def api_client(args: argparse.Namespace) -> ApiClient:
    """The REST client that ``--api`` and ``--config`` (``api_options``) name."""
    settings = client_settings(args.config)
    token = settings.token.get_secret_value() if settings.token else None
    url = args.api or settings.api_url
    try:
        check_api_url(url, settings.mode)
    except ValueError as e:
        raise ApiError(f"{e} (EDGELOOP_MODE=development allows it for a test)") from e
    return ApiClient(url, settings.timeout_s, token, settings.ca_file)


def only_model(api: ApiClient) -> str:
    models, _ = api.get_as(ModelsPublic, "/v1/models")
    names = [m.name for m in models.models]
    if len(names) == 1:
        return names[0]
    if not names:
        raise ApiError(f"fleet {models.fleet!r} has no published model yet")
    raise ApiError(f"fleet {models.fleet!r} has models {', '.join(names)}: pass --model")
