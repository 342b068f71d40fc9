"""The REST API's settings: one class, built in ``main()`` and passed to ``create_app``.

Values come from the environment (``EDGELOOP_API_<FIELD>``), then the TOML file
given to ``edgeloop api --config``, then the defaults below.

The public key has no default outside ``mode = "development"``: an API that
cannot verify what it serves would show operators explanations nobody signed.

>>> s = ApiSettings(public_key="/etc/edgeloop/signing.pub", fleet="lab")
>>> s.port, s.blob_dir
(8080, PosixPath('/var/lib/edgeloop/blobs'))
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cloud.settings import DEV_BLOB_DIR, DEV_KEY_DIR, PROD_BLOB_DIR
from shared.config import EnvFirstSettings
from shared.keys import check_name


class ApiSettings(EnvFirstSettings):
    """Everything one API process needs to know."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_API_", extra="forbid")

    mode: Literal["production", "development"] = "production"
    fleet: str = "default"
    redis_url: str = "redis://127.0.0.1:6379/0"
    blob_dir: Path | None = Field(
        None, description="the registry's version files (the trainer's blob_dir)"
    )
    public_key: Path | None = Field(
        None,
        description="Ed25519 public key the manifests are verified with; required outside development",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("fleet")
    @classmethod
    def _safe_fleet(cls, v: str) -> str:
        return check_name("fleet", v)

    @model_validator(mode="after")
    def _defaults_by_mode(self) -> ApiSettings:
        dev = self.mode == "development"
        if self.public_key is None:
            if not dev:
                raise ValueError(
                    "public_key is required outside development: set public_key to the "
                    "signing.pub that `edgeloop keygen` wrote"
                )
            self.public_key = DEV_KEY_DIR / "signing.pub"
        if self.blob_dir is None:
            self.blob_dir = DEV_BLOB_DIR if dev else PROD_BLOB_DIR
        return self
