"""The trainer's settings: one class, built in ``main()`` and passed in.

Values come from the environment (``EDGELOOP_TRAINER_<FIELD>``), then the TOML
file given to ``edgeloop trainer --config``, then the defaults below. Nothing is
read at import time, so that two trainers with different settings can run in
one test.

The signing key has no working default outside ``mode = "development"``: a
trainer that signs with a key nobody configured would publish models that no
edge trusts, or worse, that every edge of a careless fleet trusts. Nor does
``release``: in production it is ``manual`` unless set (a published version is
only registered; rollouts and operators decide what devices run), in
development ``direct`` (the version becomes the fleet's target at once).

The model is a zoo name (``digits``, ``mlp``, ``regression_mlp``, ``dwcnn``,
``cnn1d``), a user's import spec (``mypkg.models:build`` or
``path/to/model.py:build``; ``cloud.learning.contract``), or any other name,
which trains the dataset's default zoo model under that name. ``model_name`` is
the model's name in the fleet (keys, versions, rollouts): the model setting
itself for a name, the function's name for an import spec, unless given.

>>> s = TrainerSettings(signing_key="/etc/edgeloop/signing.key", fleet="lab")
>>> s.model, s.model_name, s.dataset, s.holdout_every, s.release
('digits', 'digits', 'digits', 5, 'manual')
>>> dev = TrainerSettings(mode="development", model="models/vibration.py:build")
>>> dev.model_name, dev.release
('build', 'direct')
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from cloud.data.import_spec import function_name, is_import_spec
from cloud.data.ingest import IngestOptions
from cloud.data.replay import DataOptions
from cloud.registry.locations import DEV_BLOB_DIR, DEV_KEY_DIR, PROD_BLOB_DIR
from shared.keys import check_name
from shared.transport import RedisSettings

if TYPE_CHECKING:
    from cloud.data.datasets import Dataset
    from cloud.export.budgeted import BudgetOptions


def _default_consumer() -> str:
    # hostname-pid: unique per process, so a restarted trainer is a new consumer and
    # the old one's pending entries are reclaimed with XAUTOCLAIM.
    return f"{socket.gethostname().split('.')[0] or 'trainer'}-{os.getpid()}"


class TrainerSettings(RedisSettings):
    """Everything one trainer process needs to know."""

    model_config = SettingsConfigDict(env_prefix="EDGELOOP_TRAINER_", extra="forbid")

    mode: Literal["production", "development"] = "production"

    # Where
    fleet: str = "default"
    model: str = Field(
        "digits",
        description="a zoo model (digits, mlp, regression_mlp, dwcnn, cnn1d), an import spec "
        "'module:function' or 'path/to/file.py:function' (build(info) -> torch.nn.Module), or "
        "a name under which the dataset's default zoo model trains",
    )
    model_name: str = Field(
        "",
        description="the model's name in the fleet; default: model itself, or for an import "
        "spec the function's name",
    )
    signing_key: Path | None = Field(
        None, description="Ed25519 private key (edgeloop keygen); required outside development"
    )
    tuf_targets_key: Path | None = Field(
        None,
        description="the fleet's TUF targets key (targets.key from `edgeloop keys init`); set: "
        "every published version "
        "is also signed into the fleet's TUF targets (edges with tuf_root install only those)",
    )
    tuf_online_key: Path | None = Field(
        None,
        description="the TUF snapshot/timestamp key, for development only: with it a publish "
        "also re-signs snapshot and timestamp; without it the controller's schedule does",
    )
    consumer: str = Field(default_factory=_default_consumer, min_length=1, max_length=200)

    # What
    dataset: str = Field(
        "digits",
        description='"digits", "csv:PATH", "npz:PATH" (arrays X [N, *input_shape] and y; optional '
        'labels, outputs, X_drift, y_drift) or "py:module:function" (returns the same keys)',
    )
    label_column: str | None = Field(None, description="CSV label column; default: the last")
    task: Literal["classification", "regression"] | None = Field(
        None,
        description="the task, when y does not say it (default: integers or strings "
        "are classes, floats are regression targets)",
    )
    pretrained: Path | None = Field(
        None,
        description="a safetensors file of the model's weights (its state_dict) to start from "
        "instead of bootstrap training; version 1 is still exported, checked and published",
    )
    seed: int = 0
    seed_split: Literal["shuffled", "whole"] = Field(
        "shuffled",
        description="shuffled: the bootstrap trains on a stratified 30% of the dataset and holds "
        "out 10%; whole: the dataset is all seed data in its order, every 5th row held out "
        "(edgeloop replay gives the trainer a stream's first rows)",
    )

    # When to train
    round_min_samples: int = Field(200, ge=1, description="new labeled samples that start a round")
    round_interval_s: float = Field(60.0, gt=0, description="timer trigger")
    round_interval_min_samples: int = Field(20, ge=1, description="new samples the timer needs")
    gate_min_recent: int = Field(30, ge=1, description="recent-window samples a round needs")
    drift_window: int = Field(50, ge=5, description="served predictions per drift check")
    drift_drop: float = Field(0.2, gt=0, lt=1, description="accuracy drop that signals drift")
    drift_rise: float = Field(
        1.0,
        gt=0,
        description="regression: a rise of the served MAE by this share of its level signals drift",
    )
    drift_level_alpha: float = Field(0.02, gt=0, le=1, description="EWMA weight of the level")
    drift_noise_z: float = Field(
        0.0,
        ge=0,
        description="a classifier's drop must also exceed this many standard errors of the "
        "difference between a window's accuracy and the level, sqrt(level (1 - level) "
        "(1 / drift_window + alpha / (2 - alpha))): a window of a noisy stream wobbles further "
        "than drift_drop. 0 (the default): drift_drop alone; edgeloop replay's trainer uses 4 "
        '(ARCHITECTURE.md, "Rounds, triggers and the lease")',
    )
    lock_ttl_ms: int = Field(15000, ge=100, description="lease on rounds for this model")

    # The data the trainer keeps (in Redis)
    replay_capacity: int = Field(2000, ge=10)
    holdout_capacity: int = Field(1000, ge=10)
    holdout_every: int = Field(5, ge=2, description="every k-th accepted sample is held out")
    recent_window: int = Field(200, ge=1, description="most recent held-out samples")
    recent_train: int = Field(300, ge=0, description="most recent training samples")

    # How to train
    epochs: int = Field(6, ge=1)
    bootstrap_epochs: int = Field(25, ge=1)
    retrain_max_samples: int = Field(
        0,
        ge=0,
        description="a round on a stream with no drift signalled so far whose training set "
        "holds at most this many samples trains a fresh model with the bootstrap's recipe "
        "(bootstrap_epochs at lr) instead of fine-tuning the parent, and ships a fresh "
        "export, not a budgeted delta "
        '(ARCHITECTURE.md, "Rounds on small stationary streams"); 0: rounds always fine-tune',
    )
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    weight_decay_choices: list[Annotated[float, Field(ge=0)]] = Field(
        default_factory=list,
        description="when given, the weight decay every training of this model uses is the "
        "one of these that 5-fold cross-validation on the seed split scores best (the "
        "bootstrap's recipe; a tie keeps the larger), instead of weight_decay "
        '(cloud/learning/selection.py; ARCHITECTURE.md, "Learning fast enough")',
    )
    train_workers: int = Field(
        1,
        ge=1,
        description="processes a round trains on, data-parallel with torch.distributed "
        "(cloud/learning/parallel.py); 1: in the trainer's own process, as always",
    )
    train_staleness: int | None = Field(
        0,
        ge=0,
        description="steps a training worker may run ahead of the slowest (Stale Synchronous "
        "Parallel): 0 all-reduces the gradients every step, 'inf' never waits",
    )

    # Limits against poisoning (cloud/data/admission.py, cloud/data/quarantine.py)
    max_device_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="the largest share one device may have of a round's new training data "
        "and of the gate's held-out data (by weight); its excess waits for a later round. "
        "1: no cap",
    )
    device_share_floor: int | None = Field(
        None,
        ge=0,
        description="samples a device may always add to a round, whatever its share: with "
        "fewer devices than 1 / max_device_share, the cap alone would admit nothing. "
        "Default: round_min_samples, so that a lone device's samples are admitted as fast "
        "as they start rounds and its backlog does not grow",
    )
    max_device_backlog: int = Field(
        20000,
        ge=0,
        description="training samples one device may have waiting for admission; beyond it "
        "its new ones are dead-lettered with the reason (0: no limit)",
    )
    quarantine: bool = Field(
        True, description="check every device's labels against the model and quarantine outliers"
    )
    quarantine_margin: float = Field(
        0.25,
        gt=0,
        lt=1,
        description="how far above the fleet's median disagreement rate a device must be",
    )
    quarantine_delta: float = Field(
        1e-6, gt=0, lt=1, description="the chance bound (Chernoff) below which it is quarantined"
    )
    quarantine_min_samples: int = Field(
        100, ge=1, description="samples checked before a device is judged"
    )
    quarantine_error_factor: float = Field(
        3.0,
        gt=0,
        description="regression: a label disagrees when the model's error on it exceeds this "
        "many times the model's MAE on the trusted seed holdout",
    )

    # The gate and the export (a regressor's are shares of the parent's MAE)
    drop_contradicted: bool = Field(
        True,
        description="after a drift, leave out of training and of the forgetting check the "
        "stored samples the labels since the drift contradict (a classifier's), and weigh "
        "those labels more while the drift is young (any task); false: neither",
    )
    concept_min_samples: int = Field(
        50, ge=2, description="training samples since a drift before they say what the world is"
    )
    concept_min_recent: int = Field(
        10,
        ge=1,
        description="held-out samples since a drift that judge its rounds alone (fewer: the "
        "newest gate_min_recent, some from before the drift)",
    )
    concept_share: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="share of a young drift's rounds' training data that is the labels since "
        "the drift (repeated to reach it; 0: each once)",
    )
    concept_round_samples: int = Field(
        50, ge=1, description="new samples that start a round while a drift is young"
    )
    drift_epochs: int = Field(10, ge=1, description="epochs of a round while a drift is young")
    drift_lr: float = Field(
        1e-2, gt=0, description="learning rate of a round while a drift is young"
    )
    min_gain: float = Field(0.01, description="child must beat parent on the recent window by this")
    forgetting_tolerance: float = Field(0.03, ge=0, description="allowed loss on earlier data")
    probe_size: int = Field(32, ge=1)
    exemplars: int = Field(
        200,
        ge=0,
        description="the newest seed rows the bootstrap's manifest carries for the edges' "
        "adapters to start from (classifiers with at most 64 input values, at most 64 KiB "
        "of values; 0: none)",
    )
    # argmax flips between near-tied classes are expected on hard tabular data; a broken
    # (e.g. dynamic-range) file disagrees far more than this
    min_int8_agreement: float = Field(0.95, ge=0, le=1)
    calibration_size: int = Field(200, ge=1)

    # How a round's child is written (cloud/export/budgeted.py)
    update_mode: Literal["budgeted", "full"] = Field(
        "budgeted",
        description="budgeted: the child on the parent's frozen int8 grid, at most the budget of "
        "changed weight bytes, the rest carried to later rounds; full: a fresh export each round",
    )
    update_budget_bytes: int | None = Field(
        None, ge=1, description="weight bytes a round may change; default update_budget_fraction"
    )
    update_budget_fraction: float = Field(
        0.0233, gt=0, le=1, description="the budget as a fraction of the model's weight bytes"
    )
    update_clip_tolerance: float = Field(
        0.05, ge=0, le=1, description="weights outside the frozen range that force re-calibration"
    )
    update_activation_tolerance: float = Field(
        0.1, ge=0, description="activation range misfit that re-calibrates activation scales only"
    )
    update_max_loss: float = Field(
        0.05,
        ge=0,
        le=1,
        description="recent-window accuracy a budgeted child may trail the round's unconstrained "
        "(float) model by; beyond it the round ships more (a larger budget, then a fresh export)",
    )
    update_delta_levels: tuple[Annotated[int, Field(ge=1, le=254)], ...] = Field(
        (8, 16, 32, 64),
        description="step counts a changed int8 weight moves by (either sign), so a patch's data "
        "is a few symbols; empty: any step",
    )
    update_select_factor: int = Field(
        4,
        ge=1,
        le=64,
        description="the first refit trains this many times the budget's values; each next one "
        "the better half by benefit, down to the budget",
    )
    refit_epochs: int = Field(6, ge=1, description="epochs training only the budgeted weights")
    refit_lr: float = Field(2e-3, gt=0)

    # The registry and delivery
    blob_dir: Path | None = Field(
        None,
        description="version files by sha256 (DirBlobStore); default /var/lib/edgeloop/blobs, "
        "in development .edgeloop-dev/blobs",
    )
    max_patches: int = Field(
        4, ge=0, description="patches per announcement: the parent, then what most devices serve"
    )
    patch_ttl_s: int = Field(7 * 24 * 3600, ge=60, description="how long a patch stays in Redis")
    deltas_maxlen: int = Field(
        1000,
        ge=10,
        description="announcements kept in the fleet's deltas stream (MAXLEN ~): edges follow "
        "their desired version, the history is only their nudge",
    )
    publish_wait_replicas: int = Field(
        0,
        ge=0,
        description="replicas that must hold a published version (Redis WAIT) before it "
        "counts as published; fewer within publish_wait_ms: the round is reported not "
        "published and a later one publishes again (0: do not wait)",
    )
    publish_wait_ms: int = Field(1000, ge=1, description="how long a publish waits for them")
    release: Literal["direct", "manual"] | None = Field(
        None,
        description="direct: a published version becomes the fleet's target (unless a rollout "
        "of the model is in progress); manual: targets are left to rollouts and operators. "
        "Default: manual in production (the trainer's key publishes, it does not decide what "
        "devices run), direct in development",
    )

    # Ingest
    claim_idle_ms: int = Field(30000, ge=1)
    read_count: int = Field(
        1000, ge=1, description="feedback events per read, about (an entry holds one or a batch)"
    )
    block_ms: int = Field(500, ge=1)
    max_event_bytes: int = Field(65536, ge=64)
    deadletter_maxlen: int = Field(10000, ge=1)
    feedback_trim_interval_s: float = Field(
        5.0,
        description="trim the feedback streams to what no consumer group still needs (accepted "
        "entries go), at most this often; negative: never",
    )
    read_shared_stream: bool = Field(
        True,
        description="also read the fleet-wide feedback stream (edges that predate streams per "
        "model write there); off once every edge writes its models' own streams",
    )

    status_interval_s: float = Field(5.0, gt=0)

    @field_validator("fleet")
    @classmethod
    def _safe_name(cls, v: str, info: ValidationInfo) -> str:
        return check_name(info.field_name or "name", v)

    @field_validator("model")
    @classmethod
    def _model_spec(cls, v: str) -> str:
        return v if is_import_spec(v) else check_name("model", v)

    @model_validator(mode="after")
    def _default_model_name(self) -> TrainerSettings:
        if not self.model_name:
            self.model_name = (
                function_name(self.model) if is_import_spec(self.model) else self.model
            )
        check_name("model_name", self.model_name)
        return self

    @field_validator("train_staleness", mode="before")
    @classmethod
    def _unbounded(cls, v: object) -> object:
        if isinstance(v, str) and v.strip().lower() in ("inf", "infinity", "none", "∞"):
            return None
        return v

    @field_validator("dataset")
    @classmethod
    def _dataset_spec(cls, v: str) -> str:
        kind, _, rest = v.partition(":")
        if v != "digits" and not (kind in ("csv", "npz", "py") and rest):
            raise ValueError('use "digits", "csv:PATH", "npz:PATH" or "py:module:function"')
        return v

    @model_validator(mode="after")
    def _signing_key_required(self) -> TrainerSettings:
        if self.signing_key is None:
            if self.mode != "development":
                raise ValueError(
                    "signing_key is required outside development: run `edgeloop keygen --out DIR` "
                    "and set signing_key = 'DIR/signing.key'"
                )
            self.signing_key = DEV_KEY_DIR / "signing.key"
        return self

    @model_validator(mode="after")
    def _default_share_floor(self) -> TrainerSettings:
        if self.device_share_floor is None:
            self.device_share_floor = self.round_min_samples
        return self

    @model_validator(mode="after")
    def _default_release(self) -> TrainerSettings:
        if self.release is None:
            self.release = "direct" if self.mode == "development" else "manual"
        return self

    @model_validator(mode="after")
    def _default_blob_dir(self) -> TrainerSettings:
        if self.blob_dir is None:
            self.blob_dir = DEV_BLOB_DIR if self.mode == "development" else PROD_BLOB_DIR
        return self

    def dev_key_missing(self) -> bool:
        """True when a development trainer should make its own key pair first."""
        return (
            self.mode == "development"
            and self.signing_key is not None
            and not self.signing_key.exists()
        )

    def ingest_options(self) -> IngestOptions:
        """How this trainer reads its model's feedback."""
        return IngestOptions(
            model=self.model_name,
            consumer=self.consumer,
            holdout_every=self.holdout_every,
            read_count=self.read_count,
            block_ms=self.block_ms,
            claim_idle_ms=self.claim_idle_ms,
            max_event_bytes=self.max_event_bytes,
            deadletter_maxlen=self.deadletter_maxlen,
            read_shared_stream=self.read_shared_stream,
            max_device_backlog=self.max_device_backlog,
            trim_interval_s=self.feedback_trim_interval_s,
        )

    def data_options(self, dataset: Dataset) -> DataOptions:
        """What this trainer keeps of ``dataset``'s samples."""
        return DataOptions(
            model=self.model_name,
            input=dataset.input,
            task=dataset.task,
            replay_capacity=self.replay_capacity,
            holdout_capacity=self.holdout_capacity,
            recent_window=self.recent_window,
            recent_train=self.recent_train,
            stage=True,
        )

    def budget_options(self) -> BudgetOptions:
        """How a budgeted round writes its child."""
        # imported here: the export stage imports torch, reading settings must not
        from cloud.export.budgeted import BudgetOptions

        return BudgetOptions(
            budget_bytes=self.update_budget_bytes,
            budget_fraction=self.update_budget_fraction,
            clip_tolerance=self.update_clip_tolerance,
            activation_tolerance=self.update_activation_tolerance,
            refit_epochs=self.refit_epochs,
            refit_lr=self.refit_lr,
            min_agreement=self.min_int8_agreement,
            levels=tuple(self.update_delta_levels),
            select_factor=self.update_select_factor,
        )
