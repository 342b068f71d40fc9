"""Version listings and diffs as terminal output (rich), from the API's public shapes.

>>> metric_value("earlier_samples", 346.0), metric_value("recent_accuracy", 0.90412)
('346', '0.904')
"""

from __future__ import annotations

from rich.console import Group, JustifyMethod, RenderableType
from rich.table import Table
from rich.text import Text

from cloud.api.schemas import DiffPublic, ModelsPublic, VersionPublic, VersionsPublic
from cloud.cli.render.explain import (
    DASH,
    flips_text,
    fmt,
    heading,
    layers_table,
    metrics_table,
    recall_table,
    when,
)


def metric_value(name: str, value: float | None) -> str:
    if value is not None and name.endswith("_samples") and float(value).is_integer():
        return str(int(value))
    return fmt(value)


def versions_table(v: VersionsPublic) -> Group:
    """One row per version, newest first, then each version's summary (which wraps)."""
    t = Table(
        title=f"{v.model}: {len(v.versions)} versions (accuracy on the recent window and "
        "earlier data, as published)",
        title_justify="left",
        collapse_padding=True,
    )
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("version", "right"),
        ("sha256", "left"),
        ("parent", "right"),
        ("published UTC", "left"),
        ("trigger", "left"),
        ("labels", "left"),
        ("recent", "right"),
        ("earlier", "right"),
    )
    for name, justify in columns:
        t.add_column(name, justify=justify, no_wrap=name == "sha256")
    summaries: list[RenderableType] = [heading("Summaries")]
    for r in reversed(v.versions):
        t.add_row(
            f"v{r.version}",
            r.sha256[:12],
            f"v{r.parent_version}" if r.parent_version else DASH,
            when(r.created_at),
            r.trigger or DASH,
            ", ".join(r.labels),
            fmt(r.metrics.get("recent_accuracy")),
            fmt(r.metrics.get("earlier_accuracy")),
        )
        summaries.append(Text.assemble((f"v{r.version}  ", "bold"), r.summary or DASH))
    return Group(t, *summaries)


def models_table(m: ModelsPublic) -> Table:
    t = Table(title=f"fleet {m.fleet}: {len(m.models)} models", title_justify="left")
    for name in ("model", "versions", "latest", "published (UTC)", "labels"):
        t.add_column(name)
    for model in m.models:
        latest = model.latest
        labels = ", ".join(f"{k}=v{v}" for k, v in sorted(model.labels.items()))
        t.add_row(
            model.name,
            str(model.versions),
            f"v{latest.version}" if latest else DASH,
            when(latest.created_at) if latest else DASH,
            labels,
        )
    return t


def diff_view(d: DiffPublic) -> Group:
    a, b = d.a.version, d.b.version
    na, nb = f"v{a.version}", f"v{b.version}"
    relation = "descends" if d.b_descends_from_a else "does not descend"
    if d.bytes_differing is not None:
        size = f"{d.bytes_differing} of {b.size} bytes differ ({100 * d.bytes_differing / b.size:.1f}%)"
    else:
        size = f"the files differ in length ({a.size} and {b.size} bytes)"
    sides = [(na, d.a.metrics), (nb, d.b.metrics)]
    parts: list[RenderableType] = [
        Text(
            f"{d.model}: {na} ({a.sha256[:12]}) → {nb} ({b.sha256[:12]}); {nb} {relation} from {na}",
            style="bold",
        ),
        Text(
            f"both int8 files run now on {d.earlier_samples} earlier and {d.recent_samples} recent "
            "held-out samples"
        ),
        heading("Metrics"),
        metrics_table(sides),
        recall_table(sides),
        heading(f"Predictions that flipped from {na} to {nb}"),
        flips_text(d.flips, na, nb),
        heading("Bytes and layers"),
        Text(size),
        layers_table(d.weights),
    ]
    if a.metrics or b.metrics:
        parts += [heading("Published metrics"), published_metrics_table(a, b)]
    return Group(*parts)


def published_metrics_table(a: VersionPublic, b: VersionPublic) -> Table:
    """The metrics each version was published with, side by side."""
    t = Table(title="as recorded when each was published", title_justify="left")
    for name in ("metric", f"v{a.version}", f"v{b.version}"):
        t.add_column(name, justify="left" if name == "metric" else "right")
    for k in sorted(set(a.metrics) | set(b.metrics)):
        t.add_row(k, metric_value(k, a.metrics.get(k)), metric_value(k, b.metrics.get(k)))
    return t
