"""``python -m bench.adapter_rerun DIR [--variant NAME:alpha=A,keep=K ...]``:
serve a kept replay's stream again, offline and deterministically, with the versions
its edge served row by row and the edge adapter's settings varied.

A replay's figures move by a point or two between runs of one build (how many rounds
the gate lets through, and when each version lands, depend on the load), which hides
what an edge-side setting is worth. Here every variant meets the same versions on
the same rows: the kept run's ``rows.npz`` says which version answered each streamed
row and after which row each label was sent; the edge's store (kept with
``EDGELOOP_EDGE_KEEP_VERSIONS`` above the versions published) holds every version's
file and signed manifest. Each variant runs the real ``Adapter`` as the edge's
``ServedModel`` drives it: the bootstrap's exemplars first, then test-then-train on
each label compared with the model's own answer, the adapter answering only while its
guard says so and dropped at each version change. A label is held out as the
trainers hold it out, by its feedback event's id (kept since ``rows.npz`` has
``label_event_id``; in older kept runs by a draw on its row, one in five).

Prints each variant's prequential accuracy (every streamed row counted, as the
replay does), its adapted answers and switches, and the kept run's own figure, which
the variant with the run's settings reproduces when the versions landed where
``rows.npz`` says.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.replay.streams import load_stream
from edge.adaptation import Adapter
from shared.holdout import held_out
from shared.messages import ModelManifest, SignedManifest
from shared.runtime import TFLiteModel

HOLDOUT_EVERY = 5


@dataclass(frozen=True)
class Variant:
    """The adapter's settings to serve with (the edge's defaults where unset)."""

    name: str
    alpha: float = 0.2
    keep_alpha: float = 0.5
    compare: int = 200
    choose: int = 500
    window: int = 1000
    ks: tuple[int, ...] = (5, 1, 11)
    spans: tuple[int, ...] = (400,)
    linear: bool = True
    trees: tuple[int, ...] = (400,)
    lead: int = 1
    average: bool = True

    @classmethod
    def parse(cls, text: str) -> Variant:
        """``NAME:alpha=0.05,keep=0.2,compare=200,window=1000,ks=5/1/11,spans=500,linear=0,trees=400``
        (``trees=0``: none)."""
        name, _, spec = text.partition(":")
        fields: dict[str, Any] = {}
        for part in filter(None, spec.split(",")):
            key, _, value = part.partition("=")
            try:
                if key in ("alpha", "keep"):
                    fields["keep_alpha" if key == "keep" else key] = float(value)
                elif key in ("compare", "choose", "window", "lead"):
                    fields[key] = int(value)
                elif key in ("linear", "average"):
                    fields[key] = bool(int(value))
                elif key == "trees":
                    fields[key] = tuple(int(t) for t in value.split("/") if int(t) > 0)
                elif key in ("ks", "spans"):
                    fields[key] = tuple(int(k) for k in value.split("/"))
                else:
                    raise ValueError(
                        f"variant {name!r}: unknown setting {key!r} "
                        "(alpha, keep, compare, choose, window, ks, spans, linear, trees, lead, average)"
                    )
            except ValueError as e:
                if "unknown setting" in str(e):
                    raise
                raise ValueError(f"variant {name!r}: {key}={value!r} is not a number") from e
        return cls(name, **fields)


@dataclass
class Outcome:
    accuracy: float
    adapted: int
    switches: int


class KeptRun:
    """A kept replay: its rows, its stream and the versions its edge served."""

    def __init__(self, kept: Path) -> None:
        rows = np.load(kept / "rows.npz")
        self.version: npt.NDArray[np.int64] = rows["version"]
        self.correct: npt.NDArray[np.bool_] = rows["correct"]
        self.adapted: npt.NDArray[np.bool_] = rows["adapted"]
        sent_after: npt.NDArray[np.int64] = rows["label_sent_after"]
        ids = rows.get("label_event_id")
        #: Per streamed row, whether the trainers hold its label out.
        self.held = np.array(
            [
                held_out(*_stream_key(str(ids[r])), HOLDOUT_EVERY)
                if ids is not None and ids[r]
                else (r * 2654435761 % 2**32) % HOLDOUT_EVERY == 0
                for r in range(len(sent_after))
            ]
        )
        self.seed_rows = int(rows["seed_rows"])
        self.dataset = str(rows["dataset"])
        column = str(rows["label_column"]) or None
        stream = load_stream(
            self.dataset, column, seed=int(rows["seed"]), quick=bool(rows["quick"])
        )
        self.X, self.y, self.classes = stream.X, stream.y, len(stream.labels)
        self.models: dict[int, TFLiteModel] = {}
        self.manifests: dict[int, ModelManifest] = {}
        for path in sorted((kept / "edge-1" / "models").glob("*.tflite")):
            signed = path.with_name(path.name.replace(".tflite", ".manifest.json"))
            manifest = SignedManifest.from_wire(signed.read_bytes()).manifest()
            self.manifests[manifest.version] = manifest
            self.models[manifest.version] = TFLiteModel(
                path.read_bytes(), version=manifest.version, input=manifest.input_spec
            )
        served = {int(v) for v in self.version if v >= 0}
        if not served <= set(self.models):
            raise SystemExit(
                f"versions {sorted(served - set(self.models))} are not in the kept store: "
                "replay again with EDGELOOP_EDGE_KEEP_VERSIONS above the versions published"
            )
        self.labels_after: dict[int, list[int]] = {}
        for r, s in enumerate(sent_after.tolist()):
            if s >= 0:
                self.labels_after.setdefault(s, []).append(r)
        self._answers: dict[tuple[int, int], int] = {}

    def answer(self, version: int, x: npt.NDArray[Any]) -> int:
        model = self.models[version]
        sample = np.ascontiguousarray(x, model.input.np_dtype).reshape(model.input.shape)
        return int(np.argmax(model.predict_proba(sample)))

    def row_answer(self, version: int, i: int) -> int:
        key = (version, i)
        if key not in self._answers:
            self._answers[key] = self.answer(version, self.X[i])
        return self._answers[key]

    def serve(self, variant: Variant) -> Outcome:
        adapter = Adapter(
            self.classes,
            window=variant.window,
            ks=variant.ks,
            spans=variant.spans,
            linear=variant.linear,
            trees=variant.trees,
            lead=variant.lead,
            average=variant.average,
            compare=variant.compare,
            choose=variant.choose,
            alpha=variant.alpha,
            keep_alpha=variant.keep_alpha,
        )
        serving: dict[str, Any] = {"version": None, "adapter_for": None}

        def sha(version: int) -> str:
            return self.models[version].sha256

        def on_switch(on: bool, for_sha: str) -> bool:
            if on and for_sha != sha(serving["version"]):
                return False  # the chain refuses an adapter for another version
            serving["adapter_for"] = for_sha if on else None
            return True

        adapter.on_switch = on_switch
        adapter.judge = lambda x: (self.answer(serving["version"], x), sha(serving["version"]))
        right = adapted = 0
        started = False
        model_answered: dict[int, tuple[int, int]] = {}
        for s, v in enumerate(self.version.tolist()):
            if v < 0:
                continue
            if v != serving["version"]:
                serving.update(version=v, adapter_for=None)  # a swap drops the adapter
            i = self.seed_rows + s
            answer = own = self.row_answer(v, i)
            if serving["adapter_for"] == sha(v):
                shares = adapter.answer(self.X[i])
                if shares is not None:
                    answer, adapted = int(np.argmax(shares)), adapted + 1
            right += int(answer == self.y[i])
            model_answered[s] = (v, own)
            for r in self.labels_after.get(s, []):
                if not started:
                    started = True
                    exemplars = self.manifests[v].exemplars
                    if exemplars is not None:
                        X, y = exemplars.arrays(self.manifests[v].num_features)
                        adapter.start_from(X, y, exemplars.held_out)
                if adapter.active and serving["adapter_for"] is None:
                    adapter.dropped()
                j = self.seed_rows + r
                then, label = model_answered.get(r, (None, None))
                mine = label if then == v and label is not None else self.row_answer(v, j)
                adapter.learn(self.X[j], int(self.y[j]), mine, sha(v), bool(self.held[r]))
        return Outcome(right / len(self.version), adapted, adapter.switches)


def _stream_key(event_id: str) -> tuple[str, int]:
    head, _, seq = event_id.rpartition(":")
    return head, int(seq)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.adapter_rerun", description=__doc__)
    p.add_argument("kept", type=Path, help="a replay's kept dir (edgeloop replay --keep)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:alpha=A,keep=K,compare=N,window=N,ks=K/K/K,spans=N/N (repeatable; unset: the "
        "edge's defaults)",
    )
    args = p.parse_args(argv)
    try:
        variants = [Variant.parse(v) for v in args.variant] or [Variant.parse("defaults")]
    except ValueError as e:
        p.error(str(e))
    run = KeptRun(args.kept)
    print(
        f"{args.kept.name} ({run.dataset}): the run served {run.correct.mean():.4f} "
        f"({int(run.adapted.sum())} adapted), versions {sorted(run.models)}"
    )
    for variant in variants:
        got = run.serve(variant)
        print(
            f"  {variant.name:14s} {got.accuracy:.4f}  adapted {got.adapted:5d}  "
            f"switches {got.switches:3d}   {variant}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
