"""An explanation as terminal output (rich): sections, tables, and an 8x8 grid for digits.

Everything here renders the API's public shapes (``cloud.api.schemas``); it
computes nothing but differences of two numbers it shows. The tables are
shared with ``cloud.cli.render.versions`` (``edgeloop diff``).

>>> fmt(0.91234), fmt(None), signed(0.0123), change(0.5, 0.25)
('0.912', '—', '+0.012', '-0.250')
"""

from __future__ import annotations

import time

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cloud.api.schemas import ExplanationPublic, VersionPublic
from shared.messages import (
    AttributionShift,
    Explanation,
    FeatureShift,
    Flips,
    ModelMetrics,
    TriggerSignal,
    WeightChange,
)

DASH = "—"
Side = tuple[str, ModelMetrics]


def fmt(x: float | None, digits: int = 3) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 3) -> str:
    return DASH if x is None else f"{x:+.{digits}f}"


def change(before: float | None, after: float | None) -> str:
    return DASH if before is None or after is None else signed(after - before)


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ts))


def heading(text: str) -> Text:
    return Text(f"\n{text}", style="bold underline")


def version_line(r: VersionPublic) -> str:
    parent = f"parent v{r.parent_version}" if r.parent_version else "no parent"
    labels = f", labels {', '.join(r.labels)}" if r.labels else ""
    return (
        f"{r.model} v{r.version}  sha256 {r.sha256[:12]}  {parent}{labels}  "
        f"published {when(r.created_at)} UTC"
    )


def explanation_view(p: ExplanationPublic) -> Group:
    e = p.explanation
    ok = p.signature_verified
    parts: list[RenderableType] = [
        Text(version_line(p.version), style="bold"),
        Text(
            "signature verified" if ok else "SIGNATURE NOT VERIFIED: do not trust this",
            style="green" if ok else "bold red",
        ),
        heading("Summary"),
        Text(e.summary or DASH),
    ]
    if e.window is None or e.evaluation is None:
        recorded = f"trigger {e.trigger or DASH}; published before explanations were typed"
        return Group(*parts, heading("Recorded"), Text(recorded))
    ev = e.evaluation
    sides: list[Side] = (
        [("child", ev.child)] if ev.parent is None else [("parent", ev.parent), ("child", ev.child)]
    )
    parts += [
        heading("Data window"),
        *window_lines(e),
        heading("Hyperparameters"),
        Text("  ".join(f"{k}={v}" for k, v in e.hyperparameters.items()) or DASH),
        heading(f"Metrics (int8 files in the edge runtime; ECE: {ev.ece_binning})"),
        metrics_table(sides),
        recall_table(sides),
        *_changes(e, has_parent=ev.parent is not None),
    ]
    return Group(*parts)


#: Where a version's per-layer change was measured, by ``WeightChange.source``.
WEIGHT_SOURCES = {
    "none": "no parent: sizes only",
    "artifacts": "the two int8 files",
    "trainer": "the trainer's delta report",
}


def _changes(e: Explanation, has_parent: bool) -> list[RenderableType]:
    """The sections an explanation has when there was something to compare."""
    parts: list[RenderableType] = []
    if e.forgetting is not None:
        f = e.forgetting
        change = f"parent {fmt(f.parent_accuracy)} → child {fmt(f.child_accuracy)}"
        parts += [
            heading(
                f"Forgetting (accuracy on {f.samples} held-out samples outside the recent window)"
            ),
            Text(f"{change} ({signed(f.change)})"),
        ]
    if e.flips is not None and has_parent:
        parts += [heading("Predictions that flipped"), flips_text(e.flips, "parent", "child")]
    if e.weights is not None:
        source = WEIGHT_SOURCES[e.weights.source]
        parts += [heading(f"Per-layer change ({source})"), layers_table(e.weights)]
    if e.attribution is not None:
        parts += [heading("Attribution shift"), *attribution_view(e.attribution)]
    if e.notes:
        parts += [heading("Notes"), *(Text(f"- {n}") for n in e.notes)]
    return parts


def window_lines(e: Explanation) -> list[RenderableType]:
    w = e.window
    assert w is not None
    if w.source == "seed_split":
        where = (
            f"the dataset's seed split ({e.data_window.get('dataset', '?')}), no feedback stream"
        )
    else:
        where = f"feedback stream entries {w.first_stream_id or '?'} … {w.last_stream_id or '?'}"
    out: list[RenderableType] = [
        Text(where),
        Text(f"trigger {trigger_text(w.trigger)}"),
        Text(
            f"{w.new_samples} new labeled samples; trained on {w.training_samples}; judged on "
            f"{w.earlier_samples} earlier and {w.recent_samples} recent held-out samples"
        ),
    ]
    if w.labeled_per_class:
        per_class = Table(
            box=None, pad_edge=False, title="new labels per class", title_justify="left"
        )
        for label in w.labeled_per_class:
            per_class.add_column(label, justify="right")
        per_class.add_row(*(str(n) for n in w.labeled_per_class.values()))
        out.append(per_class)
    return out


def trigger_text(t: TriggerSignal) -> str:
    """What started the round, with the figures that made it start."""
    text = t.kind
    if t.served_accuracy is not None and t.served_level is not None:
        text += (
            f": served accuracy {fmt(t.served_accuracy)} against a level of {fmt(t.served_level)}"
        )
        if t.drop_threshold is not None:
            text += f" (a drop of more than {t.drop_threshold:g} is drift)"
    elif t.threshold_samples is not None:
        text += f": {t.threshold_samples} new labels needed"
        text += f", every {t.interval_s:g} s" if t.interval_s is not None else ""
    return text


def metrics_table(sides: list[Side]) -> Table:
    """Accuracy and ECE of one or two models on both evaluation sets."""
    t = Table()
    t.add_column("set")
    for name, _ in sides:
        t.add_column(f"{name} accuracy", justify="right")
    if len(sides) == 2:
        t.add_column("change", justify="right")
    for name, _ in sides:
        t.add_column(f"{name} ECE", justify="right")
    t.add_column("samples", justify="right")
    for which in ("earlier", "recent"):
        sets = [getattr(m, which) for _, m in sides]
        acc = [s.accuracy for s in sets]
        delta = [change(acc[0], acc[1])] if len(sides) == 2 else []
        t.add_row(
            which,
            *(fmt(a) for a in acc),
            *delta,
            *(fmt(s.ece) for s in sets),
            str(sets[-1].samples),
        )
    return t


def recall_table(sides: list[Side]) -> Table:
    t = Table(title="per-class recall", title_justify="left")
    t.add_column("class")
    for which in ("earlier", "recent"):
        for name, _ in sides:
            t.add_column(f"{which} {name}", justify="right")
        if len(sides) == 2:
            t.add_column(f"{which} change", justify="right")
    labels: dict[str, None] = {}
    for _, m in sides:
        labels.update(dict.fromkeys([*m.earlier.recall, *m.recent.recall]))
    for label in labels:
        row = [label]
        for which in ("earlier", "recent"):
            vals = [getattr(m, which).recall.get(label) for _, m in sides]
            row += [fmt(v) for v in vals] + ([change(vals[0], vals[1])] if len(sides) == 2 else [])
        t.add_row(*row)
    return t


def flips_text(f: Flips, before: str, after: str) -> Group:
    lines = [
        Text(
            f"{f.fixed} fixed ({before} wrong, {after} right) and {f.broken} broken "
            f"({before} right, {after} wrong) of {f.compared} samples"
        )
    ]
    lines += [
        Text(f"  {name}: {c.fixed} fixed, {c.broken} broken of {c.compared}")
        for name, c in f.by_set.items()
    ]
    if f.fixed_ids:
        lines.append(Text(f"  fixed, e.g.: {' '.join(f.fixed_ids)}"))
    if f.broken_ids:
        lines.append(Text(f"  broken, e.g.: {' '.join(f.broken_ids)}"))
    lines.append(Text(f"  ids: {f.id_scheme}", style="dim"))
    return Group(*lines)


def count(n: int | None) -> str:
    return DASH if n is None else str(n)


def pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}"


def layers_table(w: WeightChange) -> Group:
    """Per-layer change; the trainer's "held back" column and its scales and budget when given."""
    residual = any(x.residual_l2 is not None for x in w.layers)
    names = ["layer", "params", "bytes", "bytes changed", "%", "L2 change", "relative"]
    names += ["scales changed", *(["held back (L2)"] if residual else [])]
    t = Table()
    for name in names:
        t.add_column(name, justify="left" if name == "layer" else "right")
    for x in w.layers:
        held = [fmt(x.residual_l2, 4)] if residual else []
        t.add_row(
            x.name,
            str(x.params),
            str(x.bytes),
            count(x.bytes_changed),
            pct(x.bytes_changed_fraction),
            fmt(x.l2_change, 4),
            fmt(x.relative_change),
            count(x.scales_changed),
            *held,
        )
    held = [fmt(w.residual_l2, 4)] if residual else []
    t.add_row(
        "all",
        "",
        str(w.bytes),
        count(w.bytes_changed),
        pct(w.bytes_changed_fraction),
        "",
        "",
        "",
        *held,
        style="bold",
    )
    notes = [f"quantization scales {w.scales}"] if w.scales else []
    notes += [f"budget {w.budget_bytes} bytes"] if w.budget_bytes is not None else []
    return Group(t, *([Text("; ".join(notes))] if notes else []))


def attribution_view(a: AttributionShift) -> list[RenderableType]:
    out: list[RenderableType] = [
        Text(a.method, style="dim"),
        Text(
            f"probe: {a.probe_samples} samples; shift score {fmt(a.shift_score)} "
            "(0 = the same inputs matter as much, 1 = entirely different inputs)"
        ),
    ]
    if a.parent_importance is None:
        return [*out, Text("no parent: nothing to compare with")]
    if a.grid and len(a.grid) == 2 and a.grid[0] * a.grid[1] == len(a.child_importance):
        out += pixel_grid(a)
    out.append(shifts_table(a.gained, a.lost))
    return out


def pixel_grid(a: AttributionShift) -> list[RenderableType]:
    """The change of each pixel's share of attribution, in thousandths, on the image grid."""
    assert a.grid is not None and a.parent_importance is not None
    rows, cols = a.grid
    delta = [c - p for p, c in zip(a.parent_importance, a.child_importance, strict=True)]
    top = max((abs(d) for d in delta), default=0.0) or 1.0
    t = Table(pad_edge=False)
    t.add_column("", style="dim")
    for c in range(cols):
        t.add_column(f"c{c}", justify="right")
    for r in range(rows):
        cells = []
        for d in delta[r * cols : (r + 1) * cols]:
            milli = round(1000 * d)
            style = (
                "dim"
                if not milli
                else ("green" if d > 0 else "red") + (" bold" if abs(d) >= top / 2 else "")
            )
            cells.append(Text(f"{milli:+d}" if milli else "0", style=style))
        t.add_row(f"r{r}", *cells)
    title = "change of each pixel's share of attribution, child − parent, in ‰ (+ gained, − lost)"
    return [Text(title), t]


def shifts_table(gained: list[FeatureShift], lost: list[FeatureShift]) -> Table:
    t = Table(title="inputs that gained or lost importance most", title_justify="left")
    for name in ("", "input", "parent share", "child share", "change"):
        t.add_column(name, justify="left" if name in ("", "input") else "right")
    for kind, rows in (("gained", gained), ("lost", lost)):
        for s in rows:
            t.add_row(kind, s.feature, fmt(s.parent, 4), fmt(s.child, 4), signed(s.change, 4))
    return t
