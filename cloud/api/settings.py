"""The REST API's settings: one class, built in ``main()`` and passed to ``create_app``.

Values come from the environment (``EDGELOOP_API_<FIELD>``), then the TOML file
given to ``edgeloop api --config``, then the defaults below.

The public key has no default outside ``mode = "development"``: an API that
cannot verify what it serves would show operators explanations nobody signed.
Nor has ``token_pepper``, the secret that API tokens are hashed under
(``cloud/api/tokens.py``): outside development it must be set, and not to a
well-known value; in development a fixed, public pepper is used (and logged).

>>> s = ApiSettings(public_key="/etc/edgeloop/signing.pub", fleet="lab",
...                 token_pepper="k3Jx9-fleet-lab-pepper-2f7Q")
>>> s.port, s.blob_dir, s.controller_interval_s
(8080, PosixPath('/var/lib/edgeloop/blobs'), 5.0)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cloud.registry.locations import DEV_BLOB_DIR, DEV_KEY_DIR, PROD_BLOB_DIR
from shared.keys import check_name
from shared.transport import RedisSettings, is_local

#: The pepper of ``mode = "development"``: public, so never good for anything else.
DEV_TOKEN_PEPPER = "edgeloop-development-token-pepper"
#: Peppers that are defaults somewhere (or guessable): refused outside development.
KNOWN_PEPPERS = frozenset(
    {
        DEV_TOKEN_PEPPER,
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "pepper",
        "edgeloop",
        "default",
        "password",
        "token_pepper",
        "development",
        "test",
        "example",
    }
)
MIN_PEPPER_CHARS = 16


class ApiSettings(RedisSettings):
    """Everything one API process needs to know."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_API_", extra="forbid")

    mode: Literal["production", "development"] = "production"
    fleet: str = "default"
    blob_dir: Path | None = Field(
        None, description="the registry's version files (the trainer's blob_dir)"
    )
    public_key: Path | None = Field(
        None,
        description="Ed25519 public key the manifests are verified with; required outside development",
    )
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    tls_cert_file: Path | None = Field(
        None, description="serve HTTPS with this certificate (PEM, the chain after it)"
    )
    tls_key_file: Path | None = Field(None, description="the private key of tls_cert_file (PEM)")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    token_pepper: SecretStr | None = Field(
        None,
        description="secret that API tokens are hashed under (HMAC-SHA256); required outside "
        "development, at least 16 characters; changing it invalidates every token",
    )
    token_ttl_s: float = Field(
        90 * 24 * 3600.0,
        gt=0,
        description="lifetime of a token issued without one (edgeloop token issue --ttl)",
    )
    controller_interval_s: float = Field(
        5.0,
        ge=0,
        description="run the rollout controller's step this often (0: not in this process)",
    )
    keep_versions: int = Field(
        8,
        ge=1,
        description="the controller loop keeps in Redis the files and patches of this many "
        "newest versions of each model, besides every labelled, targeted, assigned, pinned "
        "or served one; older ones' are collected (their records and manifests stay)",
    )
    collect_interval_s: float = Field(
        60.0,
        description="collect old versions' payloads and forget old rollouts this often "
        "(negative: never)",
    )
    keep_rollouts: int = Field(
        50,
        ge=1,
        description="rollout records kept (newest first); older finished ones are deleted "
        "by the controller loop",
    )
    tuf_online_key: Path | None = Field(
        None,
        description="the fleet's TUF snapshot/timestamp key (Ed25519 PEM); set: the controller "
        "loop re-signs snapshot and timestamp every tuf_refresh_s",
    )
    tuf_refresh_s: float = Field(
        600.0, gt=0, description="re-sign the TUF timestamp this often (well within its expiry)"
    )
    director_key: Path | None = Field(
        None,
        description="the fleet's director key (Ed25519 private PEM, e.g. the signing.key of its "
        "own `edgeloop keygen --out DIR`, never the trainer's); "
        "set: every target, assignment, pin and rollback is also a signed director order, "
        "renewed by the controller loop (edges with director_keys follow only those); unset "
        "(development): unsigned writes only",
    )
    director_state: Path | None = Field(
        None,
        description="a file where the controller keeps the newest director orders it has "
        "seen, so that an older order put back in Redis is caught after a restart too "
        "(one per controller process; recommended with director_key)",
    )
    director_ttl_s: float = Field(
        24 * 3600.0,
        ge=1,
        description="lifetime of a director order; the loop renews at half of it, and an edge "
        "that sees no renewal for this long reports stale",
    )
    device_status_ttl_s: int = Field(
        10, ge=1, description="lifetime of a device key written by POST /v1/devices/{id}/status"
    )
    status_stream_maxlen: int = Field(10_000, ge=1, description="cap of the status stream (~)")
    feedback_batch: int = Field(256, ge=1, description="events per feedback stream entry")
    max_body_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="larger request bodies are refused (413)"
    )

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
        if not dev:
            _check_pepper(self.token_pepper)
        self._check_tls(dev)
        return self

    def _check_tls(self, dev: bool) -> None:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together: set both or neither")
        for path in (self.tls_cert_file, self.tls_key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path}: no such file (a TLS setting of the API)")
        if not dev and self.tls_cert_file is None and not is_local(self.host):
            # Bearer tokens and device feedback would cross the network in clear.
            raise ValueError(
                f"host {self.host} is not a loopback address and the API has no TLS: set "
                "tls_cert_file and tls_key_file, or listen on 127.0.0.1 behind a "
                "TLS-terminating proxy"
            )

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert_file is not None else "http"

    @property
    def pepper(self) -> bytes:
        """The token pepper; the public development one when none is set (development only)."""
        if self.token_pepper is None:
            return DEV_TOKEN_PEPPER.encode()
        return self.token_pepper.get_secret_value().encode()

    @property
    def dev_pepper(self) -> bool:
        return self.token_pepper is None or self.token_pepper.get_secret_value() in KNOWN_PEPPERS


def _check_pepper(pepper: SecretStr | None) -> None:
    if pepper is None:
        raise ValueError(
            "token_pepper is required outside development: set EDGELOOP_API_TOKEN_PEPPER to a "
            "random secret, e.g. the output of `python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
        )
    value = pepper.get_secret_value()
    if value.strip().lower() in KNOWN_PEPPERS or len(value) < MIN_PEPPER_CHARS:
        raise ValueError(
            f"token_pepper is a well-known or short value: use a random secret of at least "
            f"{MIN_PEPPER_CHARS} characters outside development"
        )
