"""The typed explanation: round trips through a manifest, and manifests from before it still parse."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from shared.messages import (
    EXPLANATION_FORMAT,
    AttributionShift,
    DataWindow,
    EvaluationReport,
    Explanation,
    FeatureShift,
    FlipCounts,
    Flips,
    Forgetting,
    LayerChange,
    ModelManifest,
    ModelMetrics,
    ProbeSet,
    SetMetrics,
    SignedManifest,
    TriggerSignal,
    WeightChange,
)

unit = st.floats(0, 1, allow_nan=False)
ids = st.lists(st.from_regex(r"[0-9a-f]{12}", fullmatch=True), max_size=8)


def manifest(explanation: Explanation) -> ModelManifest:
    return ModelManifest(
        model="digits",
        version=2,
        sha256="ab" * 32,
        size=100,
        parent_sha256="cd" * 32,
        parent_version=1,
        num_features=64,
        labels=[str(i) for i in range(10)],
        runtime="test",
        explanation=explanation,
        probe=ProbeSet(inputs=[[0.0] * 64], expected=[[0.1] * 10]),
    )


@given(
    acc=unit,
    ece=unit,
    fixed=st.integers(0, 500),
    broken=st.integers(0, 500),
    fixed_ids=ids,
    frac=unit,
    shift=unit,
    first=st.none() | st.from_regex(r"\d{13}-\d", fullmatch=True),
    parent=st.booleans(),
)
def test_a_full_explanation_round_trips(
    acc, ece, fixed, broken, fixed_ids, frac, shift, first, parent
):
    metrics = SetMetrics(samples=10, accuracy=acc, recall={"0": acc}, ece=ece)
    both = ModelMetrics(earlier=metrics, recent=metrics)
    e = Explanation(
        format=EXPLANATION_FORMAT,
        trigger="drift",
        summary="s",
        window=DataWindow(
            source="feedback_stream",
            first_stream_id=first,
            last_stream_id=first,
            new_samples=5,
            labeled_per_class={"0": 5},
            training_samples=50,
            trigger=TriggerSignal(kind="drift", served_accuracy=acc, served_level=1.0),
        ),
        evaluation=EvaluationReport(parent=both if parent else None, child=both),
        forgetting=Forgetting(parent_accuracy=acc, child_accuracy=acc, change=0.0),
        flips=Flips(
            compared=fixed + broken,
            fixed=fixed,
            broken=broken,
            fixed_ids=fixed_ids,
            by_set={"recent": FlipCounts(compared=1, fixed=1)},
        ),
        weights=WeightChange(
            source="artifacts",
            bytes=10,
            layers=[
                LayerChange(
                    name="f1",
                    params=10,
                    bytes=10,
                    bytes_changed=1,
                    bytes_changed_fraction=frac,
                    l2_change=0.5,
                    relative_change=0.1,
                    scales_changed=2,
                )
            ],
        ),
        attribution=AttributionShift(
            method="ig",
            probe_samples=2,
            steps=4,
            grid=[8, 8],
            child_importance=[1 / 64] * 64,
            shift_score=shift,
            gained=[FeatureShift(feature="r0c1", index=1, parent=0.0, child=0.1, change=0.1)],
        ),
        notes=["n"],
    )
    m = manifest(e)
    back = SignedManifest(manifest_json=m.model_dump_json()).manifest()
    assert back == m and back.explanation.flips.fixed_ids == fixed_ids


def test_a_manifest_from_before_typed_explanations_still_parses():
    old = json.loads(manifest(Explanation()).model_dump_json())
    old["explanation"] = {
        "trigger": "count",
        "summary": "Retrained after enough new labels.",
        "data_window": {"stream_ids": ["1-0", "2-0"], "new_samples": 200},
        "hyperparameters": {"epochs": 6},
        "details": {"decision": "publish"},
    }
    m = ModelManifest.from_wire(json.dumps(old))
    e = m.explanation
    assert e.format == 1 and e.window is None and e.evaluation is None and e.attribution is None
    assert e.data_window["new_samples"] == 200 and e.trigger == "count"


def test_unknown_explanation_fields_are_ignored():
    raw = json.loads(manifest(Explanation(format=2)).model_dump_json())
    raw["explanation"]["something_new"] = {"a": 1}
    assert ModelManifest.from_wire(json.dumps(raw)).explanation.format == 2
