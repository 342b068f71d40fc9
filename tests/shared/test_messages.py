"""Round trips and refusals for every wire message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import MessageError
from shared.messages import (
    DeadLetter,
    DeltaAnnouncement,
    EdgeCounters,
    EdgeStatus,
    Exemplars,
    Explanation,
    FeedbackEvent,
    ModelManifest,
    Payload,
    ProbeSet,
    Signature,
    SignedManifest,
    TrainerStatus,
    VersionSummary,
)

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,20}", fullmatch=True)
finite = st.floats(allow_nan=False, allow_infinity=False, width=32)
sha = st.from_regex(r"[0-9a-f]{64}", fullmatch=True)


@given(
    device=names,
    epoch=names,
    seq=st.integers(0, 2**40),
    x=st.lists(finite, min_size=1, max_size=80),
    label=st.integers(0, 1000),
    predicted=st.none() | st.integers(0, 1000),
)
def test_feedback_event_round_trip(device, epoch, seq, x, label, predicted):
    ev = FeedbackEvent(
        event_id=f"{device}:{epoch}:{seq}",
        device_id=device,
        model="digits",
        x=x,
        label=label,
        predicted=predicted,
    )
    back = FeedbackEvent.from_wire(ev.to_wire())
    assert back == ev
    assert back.stream_key == (f"{device}:{epoch}", seq)


@given(
    version=st.integers(1, 10**6),
    digest=sha,
    parent=st.none() | sha,
    probs=st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=5),
)
def test_manifest_and_announcement_round_trip(version, digest, parent, probs):
    manifest = ModelManifest(
        model="digits",
        version=version,
        sha256=digest,
        size=1234,
        parent_sha256=parent,
        num_features=3,
        labels=["a", "b", "c"],
        runtime="ai-edge-litert 2.3.0",
        metrics={"acc": 0.5},
        explanation=Explanation(trigger="count", summary="s"),
        probe=ProbeSet(inputs=probs, expected=probs),
    )
    assert ModelManifest.from_wire(manifest.to_wire()) == manifest
    signed = SignedManifest(
        manifest_json=manifest.model_dump_json(), signature=Signature(key_id="k", value="c2ln")
    )
    assert SignedManifest.from_wire(signed.to_wire()).manifest() == manifest
    ann = DeltaAnnouncement(
        model="digits",
        version=version,
        sha256=digest,
        manifest_key="m",
        payloads=[
            Payload(encoding="full", key="a", size=10),
            Payload(encoding="patch", key="p", size=2, base_sha256=parent),
        ],
    )
    back = DeltaAnnouncement.from_wire(ann.to_wire())
    assert back == ann
    assert back.full_payload().key == "a"
    assert (back.patch_from(parent) is not None) == (parent is not None)


def test_status_messages_round_trip():
    status = EdgeStatus(
        device_id="pi-1",
        fleet="lab",
        model="digits",
        version=3,
        counters=EdgeCounters(predictions=5, fallback_reasons={"invoke_error": 1}),
    )
    assert EdgeStatus.from_wire(status.to_wire()) == status
    ts = TrainerStatus(
        model="digits",
        consumer="c",
        published=[
            VersionSummary(version=1, sha256="0" * 64, trigger="bootstrap", published_at=1.0)
        ],
    )
    assert TrainerStatus.from_wire(ts.to_wire()) == ts
    dl = DeadLetter(source_stream="s", source_id="1-0", reason="nan in x", payload="{}")
    assert DeadLetter.from_wire(dl.to_wire()) == dl


def test_unknown_schema_version_is_refused():
    ev = FeedbackEvent(event_id="d:e:1", device_id="d", model="m", x=[1.0], label=0)
    data = json.loads(ev.to_wire())
    data["schema_version"] = 99
    with pytest.raises(MessageError, match="schema_version 99"):
        FeedbackEvent.from_wire(json.dumps(data))


@given(st.binary(max_size=200))
def test_garbage_is_a_message_error_never_a_crash(raw):
    with pytest.raises(MessageError):
        FeedbackEvent.from_wire(raw)


def test_new_fields_from_a_newer_writer_are_ignored():
    ev = FeedbackEvent(event_id="d:e:1", device_id="d", model="m", x=[1.0], label=0)
    data = json.loads(ev.to_wire())
    data["added_later"] = {"nested": True}
    assert FeedbackEvent.from_wire(json.dumps(data)) == ev


def test_event_id_without_sequence_is_refused():
    ev = FeedbackEvent(event_id="no-seq", device_id="d", model="m", x=[1.0], label=0)
    with pytest.raises(MessageError, match="sequence number"):
        _ = ev.stream_key


# -- what the API relays for an edge (shared.signed_relay) ------------------------------


@given(
    payload=st.binary(min_size=1, max_size=512),
    signed=st.booleans(),
    sig=st.binary(min_size=64, max_size=64),
    field=st.sampled_from(["frames", "events"]),
)
def test_relayed_entries_round_trip_byte_for_byte(
    payload: bytes, signed: bool, sig: bytes, field: str
) -> None:
    from shared.signed_relay import RelayedEntry, RelayedFeedback, RelayedStatus

    entry = RelayedEntry(
        field=field,  # type: ignore[arg-type]
        payload=payload,
        device="pi-07" if signed else None,
        sig=sig if signed else None,
    )
    body = RelayedFeedback(entries=[entry]).model_dump_json()
    assert RelayedFeedback.model_validate_json(body).entries == [entry]
    status = RelayedStatus(payload=payload + b"{}", device="pi-07", sig=sig)
    assert RelayedStatus.model_validate_json(status.model_dump_json()) == status


def test_relayed_entries_refuse_half_signatures_and_bad_base64() -> None:
    from pydantic import ValidationError

    from shared.signed_relay import RelayedEntry

    for doc in (
        {"payload": "eA==", "device": "pi-07"},  # a device without a signature
        {"payload": "eA==", "device": "pi-07", "sig": "eA=="},  # a 1-byte signature
        {"payload": "e A=="},  # not base64
        {"payload": ""},  # nothing
    ):
        with pytest.raises(ValidationError):
            RelayedEntry.model_validate_json(json.dumps(doc))


def test_exemplars_must_fit_the_manifest() -> None:
    """A manifest's exemplars are float32 samples of its input, one class index each."""
    base = {
        "model": "m",
        "version": 1,
        "sha256": "ab" * 32,
        "size": 10,
        "num_features": 2,
        "labels": ["a", "b"],
        "runtime": "test",
        "probe": ProbeSet(inputs=[], expected=[]),
    }
    good = Exemplars.of(np.array([[0.0, 1.0], [2.0, 3.0]]), [0, 1])
    manifest = ModelManifest(**base, exemplars=good)
    back = ModelManifest.from_wire(manifest.to_wire())
    assert back.exemplars == good and back.exemplars.arrays(2)[1].tolist() == [0, 1]
    with pytest.raises(ValueError, match="bytes of values"):
        ModelManifest(**base, exemplars=Exemplars.of(np.zeros((2, 3)), [0, 1]))
    with pytest.raises(ValueError, match="outside the 2 classes"):
        ModelManifest(**base, exemplars=Exemplars.of(np.zeros((1, 2)), [2]))
