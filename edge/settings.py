"""The edge daemon's settings: one class, built in ``main()`` and passed in.

Values come from the environment (``EDGELOOP_EDGE_<FIELD>``), then the TOML file
given to ``edgeloop-edge --config``, then the defaults below. Nothing is read at
import time, so two daemons with different settings can run in one process.

>>> s = EdgeSettings(public_key="/etc/edgeloop/signing.pub", device_id="pi-1", fleet="lab")
>>> s.http_port, s.latency_budget_ms, s.runtime
(8700, 50.0, None)
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from shared.codec import DEFAULT_MAX_SIZE
from shared.device_identity import DeviceSigner
from shared.errors import ConfigError
from shared.keys import check_name
from shared.transport import RedisSettings, check_api_url

#: The digits classifier shipped with the package: the last link of the chain.
BUNDLED_BASELINE = Path(__file__).resolve().parent / "baseline" / "digits.tflite"


def _default_device_id() -> str:
    # The short host name is what an operator recognises; sanitised so that it is
    # a legal key part (FleetKeys refuses anything else).
    host = socket.gethostname().split(".")[0] or "edge"
    safe = "".join(c if c.isalnum() or c in "_.-" else "-" for c in host)
    return safe[:64] if safe[:1].isalnum() else f"edge-{safe}"[:64]


def _default_state_dir() -> Path:
    # systemd's StateDirectory= exports STATE_DIRECTORY; elsewhere use XDG's place.
    env = os.environ.get("STATE_DIRECTORY")
    if env:
        return Path(env.split(":")[0])
    return Path.home() / ".local" / "state" / "edgeloop" / "edge"


#: Names in state_dir a model's own folder (state_dir/<model>) must not take.
_STATE_NAMES = frozenset({"models", "spool", "refused"})


class EdgeSettings(RedisSettings):
    """Everything one edge daemon needs to know."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_EDGE_", extra="forbid")

    # -- identity -----------------------------------------------------------
    device_id: str = Field(default_factory=_default_device_id)
    fleet: str = "default"
    model: str = Field(
        "digits", description="name of the model this edge serves (the first of models)"
    )
    models: list[str] = Field(
        default_factory=list,
        description="every model this edge serves, the first first (default: [model]). "
        "The first keeps state_dir itself; each other one state_dir/<model>/",
    )
    mode: Literal["development", "production"] = "development"

    # -- connections and trust ----------------------------------------------
    # redis_url and its TLS files: shared.transport.RedisSettings
    public_key: Path = Field(description="Ed25519 public key (PEM) that signs manifests")
    tuf_root: Path | None = Field(
        None,
        description="the fleet's trusted TUF root (root.json from `edgeloop keys init`); set: a "
        "version is installed only if the fleet's signed TUF targets list it, through TUF's "
        "verified download (metadata kept in state_dir/tuf)",
    )
    director_keys: list[Path] = Field(
        default_factory=list,
        description="public keys (PEM) of the fleet's director (the rollout controller); set: "
        "the edge serves only what a signed director order names (highest counter wins, "
        "lower ones refused), ignoring the unsigned target/assignment/pin. With tuf_root, "
        "the director keys the fleet's TUF root names replace these (`edgeloop keys`)",
    )
    update_source: Literal["redis", "http"] = Field(
        "redis",
        description="where updates come from: the fleet's Redis, or (an edge that cannot reach "
        "Redis) the cloud API at api_url with api_token, which serves the same TUF files and "
        "director orders; http needs tuf_root, since the API vouches for nothing",
    )
    uplink: Literal["redis", "http"] | None = Field(
        None,
        description="where feedback and status reports go: the fleet's Redis, or the cloud API "
        "at api_url with api_token, which relays them unchanged (signed by device_key as over "
        "Redis). Default: as update_source, so an edge that updates over HTTP needs no Redis",
    )
    api_url: str | None = Field(
        None,
        description="the cloud API's base URL for update_source or uplink = http "
        "(https:// off the machine)",
    )
    api_token: SecretStr | None = Field(
        None, description="this device's API token (`edgeloop token issue --role device`)"
    )
    api_ca_file: Path | None = Field(
        None,
        validate_default=True,  # its check covers update_source, api_url and api_token
        description="the CA that signed an https:// API's certificate (default: the system's)",
    )
    device_key: Path | None = Field(
        None,
        description="this device's Ed25519 private key from `edgeloop device enroll` "
        "(device.key): signs its feedback and status reports",
    )
    state_dir: Path = Field(default_factory=_default_state_dir)
    http_host: str = "127.0.0.1"
    http_port: int = Field(8700, ge=0, le=65535)

    # -- serving ------------------------------------------------------------
    runtime: Literal["ai-edge-litert", "tflite-runtime"] | None = None
    num_threads: int = Field(1, ge=1, le=64)
    baseline_model: Path | None = BUNDLED_BASELINE
    warmup_invokes: int = Field(3, ge=0)
    latency_budget_ms: float = Field(50.0, gt=0)
    latency_probe_every: int = Field(100, ge=1)
    recent_inputs: int = Field(
        4096, ge=16, description="predictions kept for feedback joins and latency p50/p99"
    )
    accuracy_window: int = Field(500, ge=1, description="labeled predictions for rolling accuracy")

    # -- adaptation on the edge (edge/adaptation.py) --------------------------
    adaptation: Literal["auto", "off", "knn"] = Field(
        "auto",
        description="a kNN over the device's own latest labels that answers instead of the "
        "served model while a sign test says it is better: auto = classifiers whose input has "
        "at most 64 values, knn = every classifier, off = never (regressors never adapt)",
    )
    adaptation_window: int = Field(
        1000, ge=16, le=10_000, description="the latest labelled samples the kNN votes over"
    )
    holdout_every: int = Field(
        5,
        ge=2,
        description="the trainers' holdout_every: one label in this many is never trained on, "
        "and the adapter judges a new version on those (a wrong value only leans towards the "
        "served model)",
    )
    adaptation_alpha: float = Field(
        0.2,
        gt=0,
        lt=1,
        description="the guard's sign test: the adapter answers while it beats the served "
        "model over the last 200 labels with p at most this",
    )
    adaptation_keep_alpha: float = Field(
        0.5,
        gt=0,
        lt=1,
        description="once answering, the adapter goes on while it is still ahead of the "
        "served model with p at most this (not below adaptation_alpha): a record at the "
        "threshold does not flap on and off",
    )
    adaptation_voter_record: int = Field(
        500,
        ge=10,
        le=10_000,
        description="the labels over which the adapter's voters are scored: the one right most "
        "often over the last this many answers (the guard's own record stays 200 labels); a "
        "longer record stops near-equal voters taking turns on a noisy stream",
    )
    adaptation_ks: list[int] = Field(
        default_factory=lambda: [5, 1, 11],
        min_length=1,
        max_length=8,
        description="neighbours per vote: the kNN votes with each and answers with the one "
        "right most often over the last adaptation_voter_record labels (ties: the first)",
    )
    adaptation_linear: bool = Field(
        True,
        description="an online linear regression (softmax, one SGD step a label, on inputs "
        "standardised by their running mean and variance) votes beside the kNN's voters; "
        "where the concept is linear it is the better learner",
    )
    adaptation_average: bool = Field(
        True,
        description="the mean of the other voters' class shares votes too (where no single "
        "learner is right most often, their mean may be)",
    )
    adaptation_trees: list[int] = Field(
        default_factory=lambda: [400],
        max_length=4,
        description="classification trees that vote too, each refit every 25 labels on this "
        "many of the newest samples (the window at most); where the concept is a few "
        "thresholds on a few features a tree learns it from a few hundred labels; [] none",
    )
    adaptation_spans: list[int] = Field(
        default_factory=lambda: [400],
        max_length=4,
        description="shorter memories that vote too: the kNN votes with each k over the whole "
        "window and over each span of its newest samples, and answers with the voter right "
        "most often over the last adaptation_voter_record labels (after an abrupt drift the "
        "newest say more); a "
        "span as long as the window adds nothing",
    )

    # -- model store and updates --------------------------------------------
    keep_versions: int = Field(5, ge=2)
    max_artifact_bytes: int = Field(DEFAULT_MAX_SIZE, ge=1024)
    download_deadline_s: float = Field(
        60.0, gt=0, description="a version's download that takes longer is abandoned (refused)"
    )
    desired_poll_s: float = Field(
        30.0, gt=0, description="re-read the desired version this often, notice or not"
    )

    # -- self-protection after a swap (edge/guard.py) ------------------------
    guard_enabled: bool = True
    guard_window_s: float = Field(
        600.0, gt=0, description="how long after a swap the new version is watched"
    )
    guard_min_predictions: int = Field(
        200, ge=1, description="predictions on the new version before rates and p99 are judged"
    )
    guard_min_labeled: int = Field(
        50, ge=1, description="labeled predictions on the new version before accuracy is judged"
    )
    guard_max_accuracy_drop: float = Field(
        0.10, ge=0, le=1, description="vs the previous version on the same labeled inputs"
    )
    guard_max_mae_increase: float = Field(
        0.25,
        ge=0,
        description="a regressor: its MAE's rise over the previous version's on the same "
        "labeled inputs, as a share of it",
    )
    guard_max_fallback_increase: float = Field(0.05, ge=0, le=1)
    guard_max_error_increase: float = Field(0.01, ge=0, le=1)
    guard_max_p99_ratio: float = Field(3.0, gt=1, description="p99 on new / p99 on previous")
    guard_p99_floor_ms: float = Field(
        5.0, ge=0, description="a p99 below this is never a regression (timer noise)"
    )

    # -- feedback uplink ----------------------------------------------------
    feedback_batch: int = Field(
        256, ge=1, description="events per feedback stream entry; the sender waits for as many"
    )
    feedback_flush_ms: float = Field(50.0, gt=0)
    feedback_queue_max: int = Field(10_000, ge=1)
    feedback_ack: Literal["queued", "kept"] = Field(
        "queued",
        description="when /v1/feedback answers 202: once the event is queued in memory "
        "(fastest; a killed process loses what it had not sent, a flush's worth), or once it "
        "is kept, in Redis or the fsync'd spool (a killed process loses nothing it answered; "
        "the answer waits for the send: lower feedback_flush_ms with it)",
    )
    spool_max_bytes: int = Field(64 * 1024 * 1024, ge=4096)
    feedback_wait_replicas: int = Field(
        0,
        ge=0,
        description="replicas of the stream's Redis master that must hold a feedback send "
        "before the spool drops it (Redis WAIT): what survives a failover; 0: the master's "
        "reply is enough",
    )
    feedback_wait_ms: int = Field(1000, ge=1, description="how long a send waits for them")

    # -- status -------------------------------------------------------------
    status_interval_s: float = Field(2.0, gt=0)
    status_ttl_s: int = Field(10, ge=1)
    status_stream_maxlen: int = Field(10_000, ge=1)

    @field_validator("adaptation_ks")
    @classmethod
    def _ks_in_window(cls, v: list[int], info: ValidationInfo) -> list[int]:
        window = info.data.get("adaptation_window", 1000)
        if not all(1 <= k <= window for k in v):
            raise ValueError(f"each k must be between 1 and adaptation_window ({window})")
        return v

    @field_validator("adaptation_spans")
    @classmethod
    def _spans_in_window(cls, v: list[int], info: ValidationInfo) -> list[int]:
        k = max(info.data.get("adaptation_ks") or [1])
        if not all(span >= k for span in v):
            raise ValueError(f"each span must be at least the largest k ({k})")
        return v

    @field_validator("adaptation_trees")
    @classmethod
    def _trees_learn_enough(cls, v: list[int]) -> list[int]:
        if not all(span >= 20 for span in v):
            raise ValueError("each tree learns at least 20 samples")
        return v

    @field_validator("device_id", "fleet", "model")
    @classmethod
    def _key_safe(cls, v: str) -> str:
        return check_name("name", v)

    @field_validator("models")
    @classmethod
    def _distinct_names(cls, v: list[str]) -> list[str]:
        for name in v:
            check_name("model", name)
            if name in _STATE_NAMES:
                raise ValueError(f"model name {name!r} is taken by the edge's own state files")
        if len(set(v)) != len(v):
            raise ValueError(f"models {v} name a model twice")
        return v

    @model_validator(mode="after")
    def _uplink_source(self) -> EdgeSettings:
        if self.uplink is None:
            object.__setattr__(self, "uplink", self.update_source)
        if self.uplink == "http":
            if not self.api_url or self.api_token is None:
                raise ValueError("uplink = http needs api_url and api_token")
            check_api_url(self.api_url, self.mode)
        return self

    @model_validator(mode="after")
    def _first_model(self) -> EdgeSettings:
        # ``model`` is the first of ``models``: an edge configured with either works.
        if not self.models:
            object.__setattr__(self, "models", [self.model])
        elif "model" in self.model_fields_set and self.model != self.models[0]:
            raise ValueError(
                f"model {self.model!r} is not the first of models {self.models}; "
                "set one of them (model is the first of models)"
            )
        else:
            object.__setattr__(self, "model", self.models[0])
        return self

    # Each check is on a field (declared after the fields it reads), so that an
    # error names the field to fix.

    @field_validator("public_key")
    @classmethod
    def _trusted_key(cls, v: Path, info: ValidationInfo) -> Path:
        if info.data.get("mode") != "production":
            return v
        try:
            mode = v.stat().st_mode
        except OSError as e:
            raise ValueError(f"{v}: {e.strerror}") from e
        if mode & 0o022:
            # Whoever can rewrite the trust anchor can push any model to this device.
            raise ValueError(f"{v} is group- or world-writable; chmod go-w it")
        return v

    @field_validator("api_ca_file")
    @classmethod
    def _http_updates(cls, v: Path | None, info: ValidationInfo) -> Path | None:
        if info.data.get("update_source") != "http":
            return v
        url, token = info.data.get("api_url"), info.data.get("api_token")
        if not url or token is None:
            raise ValueError("update_source = http needs api_url and api_token")
        if info.data.get("tuf_root") is None:
            raise ValueError(
                "update_source = http needs tuf_root: the API is not trusted, the fleet's "
                "signed TUF metadata is"
            )
        check_api_url(url, str(info.data.get("mode")))
        return v

    @field_validator("state_dir")
    @classmethod
    def _absolute_in_production(cls, v: Path, info: ValidationInfo) -> Path:
        if info.data.get("mode") == "production" and not v.is_absolute():
            raise ValueError(f"{v} must be an absolute path in production")
        return v

    @field_validator("status_ttl_s")
    @classmethod
    def _outlives_interval(cls, v: int, info: ValidationInfo) -> int:
        interval = info.data.get("status_interval_s")
        if interval is not None and v <= interval:
            raise ValueError(
                f"must exceed status_interval_s ({interval}), "
                "or the health key expires between reports"
            )
        return v


def device_signer(settings: EdgeSettings) -> DeviceSigner | None:
    """The signer of an enrolled device (``device_key``), or None: an unsigned edge, which
    a fleet accepts only while it has no enrolled device (development)."""
    if settings.device_key is None:
        return None
    try:
        pem = Path(settings.device_key).read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the device key {settings.device_key}: {e}") from e
    return DeviceSigner(settings.fleet, settings.device_id, pem)
