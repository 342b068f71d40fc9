"""Registry data in the public shapes (``cloud.api.schemas``): the one read path for versions.

The REST API's handlers are one call each into ``VersionsView``; the CLI
(``edgeloop versions|explain|diff``) reads the same shapes back over HTTP, so
what a person sees in a terminal and what a program gets from the API are
built by the same code.

Every manifest served is checked against the fleet's public key first and the
answer says whether it verified. A diff runs both versions' int8 files in the
edge runtime on the evaluation data as it is now (the holdout reservoir and the
recent window in Redis), so both sides are measured on the same samples.
"""

from __future__ import annotations

import logging

import numpy as np
import redis

from cloud.api.schemas import (
    DiffPublic,
    DiffSide,
    ExplanationPublic,
    ManifestPublic,
    ModelPublic,
    ModelsPublic,
    VersionPublic,
    VersionsPublic,
)
from cloud.data.replay import DataOptions, TrainerData
from cloud.evaluation.comparison import EVAL_SETS, flips, model_metrics, predict_sets
from cloud.evaluation.gate import Samples
from cloud.evaluation.layer_diff import compare_artifacts
from cloud.export.artifact import Artifact
from cloud.registry.versions import Registry, VersionNotFound
from shared.errors import SignatureError
from shared.keys import FleetKeys
from shared.messages import SignedManifest, VersionRecord
from shared.signing import Verifier
from shared.task import TaskSpec
from shared.tensors import TensorSpec

logger = logging.getLogger(__name__)


class ModelNotFound(VersionNotFound):
    """The fleet has no published version of a model by that name."""


def version_public(record: VersionRecord) -> VersionPublic:
    """The registry's row as a listing shows it (every field but the wire's schema version)."""
    return VersionPublic.model_validate(record, from_attributes=True)


class VersionsView:
    """Read-only views of one fleet's registry."""

    def __init__(self, registry: Registry, verifier: Verifier | None) -> None:
        self.registry = registry
        self.verifier = verifier

    @property
    def fleet(self) -> str:
        return self.registry.keys.fleet

    # -- models and versions ----------------------------------------------------

    def list_models(self) -> ModelsPublic:
        out = []
        for name in self.registry.models():
            records = self.registry.versions(name)
            labels = {label: r.version for label, r in self.registry.labels(name).items()}
            latest = version_public(records[-1]) if records else None
            out.append(ModelPublic(name=name, versions=len(records), latest=latest, labels=labels))
        return ModelsPublic(fleet=self.fleet, models=out)

    def list_versions(self, model: str, limit: int | None = None) -> VersionsPublic:
        records = self.registry.versions(model, limit)
        if not records:
            raise ModelNotFound(f"fleet {self.fleet!r} has no model {model!r}")
        return VersionsPublic(model=model, versions=[version_public(r) for r in records])

    def read_version(self, model: str, ref: str) -> ManifestPublic:
        record, signed, verified = self._signed(model, ref)
        return ManifestPublic(
            version=version_public(record),
            manifest=signed.manifest(),
            signed=signed,
            signature_verified=verified,
        )

    def read_explanation(self, model: str, ref: str) -> ExplanationPublic:
        record, signed, verified = self._signed(model, ref)
        return ExplanationPublic(
            version=version_public(record),
            explanation=signed.manifest().explanation,
            signature_verified=verified,
        )

    def read_delta(self, model: str, base_sha256: str, target: str) -> tuple[bytes, str]:
        """The patch from ``base_sha256`` to ``target`` and the target's sha256.

        VersionNotFound (unknown model, target or base) or PatchUnavailable (no
        patch is possible: fetch the full file).
        """
        self._require_model(model)
        target_sha = self.registry.resolve(model, target)
        return self.registry.delta(model, base_sha256, target_sha), target_sha

    def _signed(self, model: str, ref: str) -> tuple[VersionRecord, SignedManifest, bool]:
        self._require_model(model)
        record = self.registry.get(model, ref)
        signed = self.registry.signed_manifest(model, record.sha256)
        return record, signed, self._verified(signed)

    def _verified(self, signed: SignedManifest) -> bool:
        if self.verifier is None:
            return False
        try:
            self.verifier.verify(signed.manifest_json.encode("utf-8"), signed.signature)
        except SignatureError as e:
            logger.warning("a stored manifest does not verify: %s", e)
            return False
        return True

    def _require_model(self, model: str) -> None:
        if self.registry.latest(model) is None:
            raise ModelNotFound(f"fleet {self.fleet!r} has no model {model!r}")

    # -- diff -------------------------------------------------------------------

    def diff_versions(self, model: str, a: str, b: str) -> DiffPublic:
        """Metrics side by side, per-layer change and flips from version ``a`` to ``b``."""
        self._require_model(model)
        rec_a, rec_b = self.registry.get(model, a), self.registry.get(model, b)
        manifest = self.registry.manifest(model, rec_b.sha256)
        content_a = self.registry.content_by_sha(rec_a.sha256)
        content_b = self.registry.content_by_sha(rec_b.sha256)
        task = manifest.task_spec
        evaluation = self._evaluation_sets(model, manifest.input_spec, task)
        sets = dict(zip(EVAL_SETS, evaluation, strict=True))
        proba_a = predict_sets(Artifact(content_a), sets)
        proba_b = predict_sets(Artifact(content_b), sets)
        metrics_a = model_metrics(proba_a, sets, task)
        metrics_b = model_metrics(proba_b, sets, task)
        lineage = {r.sha256 for r in self.registry.lineage(model, rec_b.sha256)}
        return DiffPublic(
            model=model,
            a=DiffSide(version=version_public(rec_a), metrics=metrics_a),
            b=DiffSide(version=version_public(rec_b), metrics=metrics_b),
            earlier_samples=len(sets["earlier"][1]),
            recent_samples=len(sets["recent"][1]),
            flips=flips(sets, proba_a, proba_b, task),
            weights=compare_artifacts(content_a, content_b),
            bytes_differing=_bytes_differing(content_a, content_b),
            b_descends_from_a=rec_a.sha256 in lineage,
        )

    def _evaluation_sets(
        self, model: str, input: TensorSpec, task: TaskSpec
    ) -> tuple[Samples, Samples]:
        # Only the readers of TrainerData are used; capacities matter for writes alone.
        options = DataOptions(model, input, task)
        data = TrainerData(self.registry.client, FleetKeys(self.fleet), options)
        return data.holdout_set(), data.recent_set()


def _bytes_differing(a: bytes, b: bytes) -> int | None:
    """Bytes that differ at the same offset; None for files of different lengths."""
    if len(a) != len(b):
        return None
    return int(np.count_nonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8)))


def ping(client: redis.Redis) -> str:
    """``ok``, or what is wrong with the registry's Redis."""
    try:
        client.ping()
    except redis.RedisError as e:
        return f"unavailable: {e}"
    return "ok"
