"""Budgeted deltas for every zoo family: full file, patch, and what the budget costs.

For each family (``cloud.learning.zoo``) on data of its kind, with a drift of
its own (digits: rotated 90 degrees; the table: columns mirrored and rotated;
``examples/vibration``: a speed change and a re-mounted sensor; ``examples/images``:
a failed lamp; ``examples/regression``, bearing temperatures: summer and a
clogged fan), a parent is trained on
the seed data and exported, then a few **rounds** each fine-tune on a new chunk
of drifted data (with as much seed data replayed) twice over:

- the **budgeted** chain: the trainer's budgeted update (``cloud.export.budgeted``)
  from the previous budgeted version, its shadow carried; each patch made by
  ``shared.delta.make_patch`` and applied with the edge's ``apply_patch``, which
  must rebuild the child byte for byte (its sha256);
- the **unconstrained** chain: the same fine-tunes, each a fresh int8 export.

Per family: the child file's bytes, the full bytes (zstd -19 of each child, what
shipping the file costs, summed over the rounds), the patch bytes (summed),
their ratio, and the task's metric (accuracy, or MAE in the targets' units) of
the last budgeted and the last unconstrained child on held-out drifted samples
in the edge runtime: the gap is what the budget costs. A round whose update
cannot be written on the frozen grid falls back to a fresh export, as the
trainer does, and says why (``scales``, ``reason``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from cloud.data.datasets import Dataset
    from cloud.export.budgeted import BudgetOptions, Child
    from cloud.export.exporter import ExportResult
    from cloud.learning.models import TaskModel

logger = logging.getLogger(__name__)

FAMILIES = ("digits", "mlp", "regression_mlp", "dwcnn", "cnn1d")

#: A patch's ratio to the full bytes each family must stay under (the digits goal's 5%
#: for every family; small models pay the patch's fixed 78-byte header on few bytes).
GOAL_RATIO = 0.05


@dataclass(frozen=True)
class Sizes:
    """How much data and training one family's run takes."""

    samples: int  # generated samples (the examples' generators), before the drift
    parent_epochs: int
    round_samples: int  # drifted samples per round (plus as many replayed seed samples)
    child_epochs: int
    rounds: int
    eval_size: int  # held-out drifted samples the metric is taken on
    refit_epochs: int = 6
    select_factor: int = 4
    budget_fraction: float = 0.0233


FULL_SIZES = Sizes(
    samples=2400, parent_epochs=15, round_samples=300, child_epochs=4, rounds=3, eval_size=400
)
QUICK_SIZES = Sizes(
    samples=1200, parent_epochs=10, round_samples=200, child_epochs=3, rounds=1, eval_size=300
)
#: What the tests run: the same path on little data and short training.
TINY = Sizes(
    samples=600,
    parent_epochs=8,
    round_samples=96,
    child_epochs=2,
    rounds=1,
    eval_size=96,
    refit_epochs=2,
    select_factor=2,
)
# -- data ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Drifting:
    """A family's seed data and its drifted concept (disjoint rows)."""

    seed: Dataset  # the parent trains on it
    holdout: Dataset  # calibration and probes
    X_drift: npt.NDArray[Any]
    y_drift: npt.NDArray[Any]


def family_data(family: str, sizes: Sizes, seed: int = 0) -> Drifting:
    """Data of the family's kind with a drift of its own (module docstring)."""
    from cloud.data.datasets import drift, load_dataset, split

    n = sizes.samples
    if family == "digits":
        parts = split(load_dataset("digits"), seed)
        return Drifting(
            parts.seed_train, parts.seed_holdout, drift("digits")(parts.stream.X), parts.stream.y
        )
    if family == "mlp":
        parts = split(_table(n, seed), seed)
        return Drifting(
            parts.seed_train, parts.seed_holdout, drift("tabular")(parts.stream.X), parts.stream.y
        )
    example = {"cnn1d": "vibration", "dwcnn": "images", "regression_mlp": "regression"}.get(family)
    if example is None:
        raise ValueError(f"no data for family {family!r}; families: {', '.join(FAMILIES)}")
    ds = _example(example, n, seed)
    assert ds.X_drift is not None and ds.y_drift is not None
    parts = split(ds, seed)
    return Drifting(parts.seed_train, parts.seed_holdout, ds.X_drift, ds.y_drift)


def _table(n: int, seed: int) -> Dataset:
    """A CSV-like table: six sensor columns in raw units, three classes."""
    from sklearn.datasets import make_classification

    from cloud.data.sources import Arrays
    from cloud.data.truths import checked

    X, y = make_classification(
        n_samples=n,
        n_features=6,
        n_informative=4,
        n_classes=3,
        class_sep=2.0,
        random_state=seed,
    )
    X = X * [1, 10, 100, 1, 1, 1] + [0, 50, -300, 0, 0, 0]
    return _dataset(checked(Arrays("table", "table", X.astype(np.float32), y, list("xyz")), None))


def _example(example: str, n: int, seed: int) -> Dataset:
    from cloud.data.sources import Arrays
    from cloud.data.truths import checked
    from cloud.demo.workload import example_files, load_make

    # by file, as the demo does: `examples` is a folder of the repository, not a package
    # an installed edgeloop imports
    made = load_make(example_files(example)[0])(seed=seed, n=n, n_drift=n)
    arrays = Arrays(
        example,
        f"examples/{example}",
        made["X"],
        made["y"],
        labels=made.get("labels"),
        outputs=made.get("outputs"),
        X_drift=made["X_drift"],
        y_drift=made["y_drift"],
    )
    return _dataset(checked(arrays, None))


def _dataset(data: Any) -> Dataset:
    from cloud.data.datasets import Dataset

    return Dataset(
        name="bench",
        kind="tabular" if len(data.input.shape) == 1 else "tensor",
        X=data.X,
        y=data.y,
        input=data.input,
        task=data.task,
        X_drift=data.X_drift,
        y_drift=data.y_drift,
    )


# -- the parent --------------------------------------------------------------------


@dataclass(frozen=True)
class Parent:
    """A family's trained and exported first version, and the data of its rounds."""

    family: str
    data: Drifting
    model: TaskModel
    exported: ExportResult
    sizes: Sizes
    seed: int

    @property
    def calibration(self) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
        return self.data.seed.X[:200], self.data.holdout.X[:32]


def train_parent(family: str, sizes: Sizes, seed: int = 0, model: str | None = None) -> Parent:
    """The family's parent, trained on its data's seed split; ``model`` (a zoo name or
    an import spec such as ``path/to/file.py:build``) trains another model on that data."""
    from cloud.export.exporter import export_int8
    from cloud.learning.training import Hyperparameters, bootstrap

    data = family_data(family, sizes, seed)
    hp = Hyperparameters(epochs=sizes.parent_epochs, batch_size=64, lr=2e-3, seed=seed)
    trained = bootstrap(data.seed, hp, spec=model or family).model
    exported = export_int8(trained, data.seed.X[:200], data.holdout.X[:32])
    return Parent(family, data, trained, exported, sizes, seed)


# -- the rounds --------------------------------------------------------------------


@dataclass
class RoundRow:
    """One round of one family: what the budgeted chain shipped."""

    scales: str  # frozen, activations, recalibrated
    reason: str | None  # why it re-calibrated
    file_bytes: int
    full_bytes: int  # zstd -19 of the budgeted child
    patch_bytes: int  # make_patch from the previous budgeted version
    bytes_changed: int
    budget_bytes: int | None
    patch_exact: bool  # the edge's apply_patch rebuilt the child (sha256)
    full_bytes_unconstrained: int  # zstd -19 of the unconstrained child


@dataclass
class FamilyResult:
    family: str
    task: str  # classification, regression
    metric: str  # accuracy, mae
    rounds: list[RoundRow] = field(default_factory=list)
    metric_parent: float = 0.0
    metric_budgeted: float = 0.0
    metric_unconstrained: float = 0.0
    seconds: float = 0.0
    min_agreement: float = 1.0  # the lowest int8 vs torch agreement of a fresh export
    base: bytes = field(default=b"", repr=False)  # the budgeted chain's last file but one
    content: bytes = field(default=b"", repr=False)  # its last file (a child or a re-export)
    model: TaskModel | None = field(default=None, repr=False)  # the float model of the last
    child: Child | None = field(default=None, repr=False)  # the last child, if budgeted

    @property
    def full_bytes(self) -> int:
        return sum(r.full_bytes for r in self.rounds)

    @property
    def patch_bytes(self) -> int:
        return sum(r.patch_bytes for r in self.rounds)

    @property
    def ratio(self) -> float | None:
        return self.patch_bytes / self.full_bytes if self.full_bytes else None

    @property
    def gap(self) -> float:
        """What the budget costs: accuracy points lost, or MAE added (targets' units)."""
        if self.metric == "accuracy":
            return round(100 * (self.metric_unconstrained - self.metric_budgeted), 2)
        return round(self.metric_budgeted - self.metric_unconstrained, 4)

    def figures(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "family": self.family,
            "task": self.task,
            "metric": self.metric,
            "file_bytes": self.rounds[-1].file_bytes if self.rounds else 0,
            "full_bytes": self.full_bytes,
            "patch_bytes": self.patch_bytes,
            "delta_ratio": None if ratio is None else round(ratio, 4),
            "rounds": len(self.rounds),
            "scales": [r.scales for r in self.rounds],
            "recalibrated_for": [r.reason for r in self.rounds if r.reason],
            "patch_exact": all(r.patch_exact for r in self.rounds),
            "metric_parent": round(self.metric_parent, 4),
            "metric_budgeted": round(self.metric_budgeted, 4),
            "metric_unconstrained": round(self.metric_unconstrained, 4),
            "gap": self.gap,
            "gap_unit": "points" if self.metric == "accuracy" else "target units",
            "min_export_agreement": round(self.min_agreement, 4),
            "seconds": round(self.seconds, 1),
        }


def budget_options(sizes: Sizes) -> BudgetOptions:
    """The trainer's defaults (``TrainerSettings``), with the sizes' refit and budget."""
    from cloud.export.budgeted import BudgetOptions
    from cloud.trainer.settings import TrainerSettings

    default = {name: f.default for name, f in TrainerSettings.model_fields.items()}
    return BudgetOptions(
        budget_bytes=None,
        budget_fraction=sizes.budget_fraction,
        clip_tolerance=default["update_clip_tolerance"],
        activation_tolerance=default["update_activation_tolerance"],
        refit_epochs=sizes.refit_epochs,
        refit_lr=default["refit_lr"],
        min_agreement=default["min_int8_agreement"],
        levels=tuple(default["update_delta_levels"]),
        select_factor=sizes.select_factor,
    )


def run_family(parent: Parent, opts: BudgetOptions | None = None) -> FamilyResult:
    """The parent's rounds, budgeted and unconstrained (module docstring)."""
    from cloud.export.artifact import Artifact
    from cloud.export.budgeted import BudgetedUpdate, FineTuned, FrozenScalesDoNotFit
    from cloud.export.exporter import NumericCheckError
    from cloud.learning.training import Hyperparameters, fine_tune

    start = time.perf_counter()
    sizes, data = parent.sizes, parent.data
    opts = opts or budget_options(sizes)
    task = parent.model.task
    result = FamilyResult(parent.family, task.kind, task.metric)
    held, chunks = _rows(len(data.y_drift), sizes, parent.seed)
    X_eval, y_eval = data.X_drift[held], data.y_drift[held]
    result.metric_parent = task.score(Artifact(parent.exported.content).answers(X_eval), y_eval)
    previous, shadow, free = parent.exported.content, parent.model, parent.model
    unconstrained_content = previous
    for r, rows in enumerate(chunks):
        replay = np.resize(np.arange(len(data.seed.y)), len(rows))
        X = np.concatenate([data.X_drift[rows], data.seed.X[replay]])
        y = np.concatenate([data.y_drift[rows], data.seed.y[replay]])
        hp = Hyperparameters(sizes.child_epochs, 64, 1e-3, parent.seed + 1 + r)
        calibration = (X[:200], data.holdout.X[:32])
        free = fine_tune(free, X, y, hp).model
        unconstrained_content = _export(free, calibration, result)
        # the first round starts both chains from the parent: one fine-tune serves both
        wanted = free if r == 0 else fine_tune(shadow, X, y, hp).model
        try:
            update = BudgetedUpdate(
                previous, FineTuned(shadow, wanted, X, y, hp), calibration, opts
            )
            child = update.child()
            content, shadow = child.exported.content, child.model
            result.child = child
            scales, reason = str(child.details["scales"]), None
            budget: int | None = update.budget
        except (FrozenScalesDoNotFit, NumericCheckError) as e:  # as the trainer: a fresh export
            logger.warning("%s round %d re-calibrates: %s", parent.family, r + 1, e)
            content, shadow = _export(wanted, calibration, result), wanted
            result.child = None
            scales, budget = "recalibrated", None
            reason = e.reason if isinstance(e, FrozenScalesDoNotFit) else "numeric check"
        result.rounds.append(_row(previous, content, unconstrained_content, scales, reason, budget))
        result.base, result.content, result.model = previous, content, shadow
        previous = content
    result.metric_budgeted = task.score(Artifact(previous).answers(X_eval), y_eval)
    result.metric_unconstrained = task.score(
        Artifact(unconstrained_content).answers(X_eval), y_eval
    )
    result.seconds = time.perf_counter() - start
    return result


def _export(
    model: TaskModel, calibration: tuple[npt.NDArray[Any], npt.NDArray[Any]], into: FamilyResult
) -> bytes:
    """A fresh int8 export. A model that has barely begun to learn a drift answers with
    near-tied classes, whose argmax flips in int8 below the trainer's 95% agreement
    (its round would not publish); the run measures its bytes anyway and reports the
    lowest agreement it let through."""
    from cloud.export.exporter import NumericCheckError, export_int8

    try:
        exported = export_int8(model, *calibration)
    except NumericCheckError as e:
        logger.warning("%s: %s; measured anyway", into.family, e)
        exported = export_int8(model, *calibration, min_agreement=0.0)
    into.min_agreement = min(into.min_agreement, exported.agreement)
    return exported.content


def _rows(n: int, sizes: Sizes, seed: int) -> tuple[npt.NDArray[np.intp], list[Any]]:
    """Held-out drifted rows, and each round's chunk of the others."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    held = order[: min(sizes.eval_size, n // 3)]
    rest = order[len(held) :]
    per = max(min(sizes.round_samples, len(rest) // sizes.rounds), 1)
    return held, [rest[i * per : (i + 1) * per] for i in range(sizes.rounds)]


def _row(
    previous: bytes,
    content: bytes,
    unconstrained: bytes,
    scales: str,
    reason: str | None,
    budget: int | None,
) -> RoundRow:
    import zstandard

    from shared.codec import sha256_hex
    from shared.delta import NotPatchable, apply_patch, make_patch

    def full(b: bytes) -> int:
        return len(zstandard.ZstdCompressor(level=19).compress(b))

    try:
        patch = make_patch(previous, content)
        exact = sha256_hex(apply_patch(previous, patch, max_size=len(content))) == sha256_hex(
            content
        )
        patch_bytes = len(patch)
    except NotPatchable:  # a re-export of another length: the edge gets the file
        patch_bytes, exact = full(content), True
    a, b = np.frombuffer(previous, np.uint8), np.frombuffer(content, np.uint8)
    changed = int(np.count_nonzero(a != b)) if len(a) == len(b) else len(b)
    return RoundRow(
        scales=scales,
        reason=reason,
        file_bytes=len(content),
        full_bytes=full(content),
        patch_bytes=patch_bytes,
        bytes_changed=changed,
        budget_bytes=budget,
        patch_exact=exact,
        full_bytes_unconstrained=full(unconstrained),
    )


def run_families(
    families: tuple[str, ...], sizes: Sizes, seed: int = 0, progress: Any = None
) -> list[FamilyResult]:
    out = []
    task = progress.add_task("families", total=len(families)) if progress else None
    for family in families:
        if progress is not None:
            progress.update(task, description=f"family {family}: parent and rounds")
        out.append(run_family(train_parent(family, sizes, seed)))
        if progress is not None:
            progress.advance(task)
    return out


def families_table(results: list[FamilyResult]) -> Any:
    from rich.table import Table

    table = Table(title="Budgeted deltas per zoo family (patch vs full file, metric gap)")
    for col in ("family", "metric", "file B", "full B", "patch B", "ratio", "scales"):
        table.add_column(col, justify="left" if col in ("family", "metric", "scales") else "right")
    for col in ("parent", "budgeted", "unconstr.", "gap"):
        table.add_column(col, justify="right")
    for res in results:
        f = res.figures()
        ratio = "n/a" if f["delta_ratio"] is None else f"{f['delta_ratio']:.1%}"
        gap = f"{f['gap']:+.2f} pt" if res.metric == "accuracy" else f"{f['gap']:+.3f}"
        table.add_row(
            res.family,
            res.metric,
            f"{f['file_bytes']:,}",
            f"{f['full_bytes']:,}",
            f"{f['patch_bytes']:,}",
            ratio,
            ",".join(sorted(set(f["scales"]))),
            f"{f['metric_parent']:.3f}",
            f"{f['metric_budgeted']:.3f}",
            f"{f['metric_unconstrained']:.3f}",
            gap,
        )
    return table
