"""Rich renderings of rollouts, the fleet and its devices (the API's public shapes)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cloud.api.schemas import (
    DevicePublic,
    DevicesPublic,
    FleetPublic,
    RolloutPublic,
    RolloutsPublic,
    ServingPublic,
)

STATE_STYLE = {
    "running": "cyan",
    "waiting": "yellow",
    "paused": "yellow",
    "completed": "green",
    "rolled_back": "red",
    "aborted": "red",
    "passed": "green",
    "failed": "red",
    "pending": "dim",
    "serving": "green",
    "degraded": "yellow",
    "offline": "red",
    "starting": "cyan",
    "stopping": "dim",
}

#: Gate figures shown, in order, with their labels.
GATE_FIGURES = (
    ("devices_on_b", "on B"),
    ("labeled_b", "labeled"),
    ("metric", "metric"),
    ("metric_b", "on B"),
    ("metric_a", "on A"),
    ("error_rate_b", "errors"),
    ("fallback_rate_b", "fallback"),
    ("p99_ms_b", "p99 B ms"),
    ("p99_ms_a", "p99 A ms"),
)


#: The devices table's columns (one row per device).
DEVICE_COLUMNS = (
    "device",
    "health",
    "serving",
    "desired",
    "pinned",
    "acc",
    "p99 ms",
    "predictions",
    "fallbacks",
    "last seen",
    "last error",
)


def _state(value: str) -> Text:
    return Text(value.replace("_", " "), style=STATE_STYLE.get(value, ""))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}" if value < 10 else f"{value:.1f}"
    return str(value)


def _ago(ts: float | None) -> str:
    if ts is None:
        return "–"
    s = max(0.0, time.time() - ts)
    return (
        f"{s:.0f}s ago" if s < 120 else f"{s / 60:.0f}m ago" if s < 7200 else f"{s / 3600:.0f}h ago"
    )


def _version(v: int | None) -> str:
    return f"v{v}" if v is not None else "none"


def rollouts_table(rollouts: RolloutsPublic) -> Table:
    t = Table(title="Rollouts", title_justify="left")
    for col in ("id", "model", "from → to", "state", "stage", "devices on B", "updated"):
        t.add_column(col)
    for r in rollouts.rollouts:
        stage = r.stages[r.current]
        t.add_row(
            r.id,
            r.model,
            f"{_version(r.from_version)} → v{r.to_version}",
            _state(r.state),
            f"{stage.name} ({r.current + 1}/{len(r.stages)})",
            f"{r.devices.on_target}/{r.devices.total}",
            _ago(r.updated_at),
        )
    if not rollouts.rollouts:
        t.caption = "no rollouts yet: edgeloop rollout start MODEL VERSION"
    return t


def rollout_view(r: RolloutPublic) -> Group:
    head = Text.assemble(
        ("rollout ", "bold"),
        (r.id, "bold"),
        f"  {r.model} {_version(r.from_version)} → v{r.to_version}  ",
        _state(r.state),
        ("" if r.auto_promote else "  (manual promotion)", "dim"),
    )
    d = r.devices
    counts = Text(
        f"devices: {d.total} in rings · {d.on_target} on v{r.to_version} · "
        f"{d.on_source} on {_version(r.from_version)} · {d.elsewhere} elsewhere · {d.offline} offline"
    )
    parts: list[RenderableType] = [head, counts, _stages_table(r)]
    if r.reason:
        parts.append(Text(f"reason: {r.reason}", style="red" if not r.active else ""))
    events = Table(title="Recent events", title_justify="left", show_header=False, box=None)
    for e in r.events[-6:]:
        events.add_row(time.strftime("%H:%M:%S", time.localtime(e.ts)), e.by, e.what)
    parts.append(events)
    return Group(*parts)


def _stages_table(r: RolloutPublic) -> Table:
    """Each ring with its gate's figures; ▶ marks the ring in progress."""
    stages = Table(title="Stages", title_justify="left")
    stages.add_column("stage")
    stages.add_column("status")
    stages.add_column("ring", justify="right")
    for _, label in GATE_FIGURES:
        stages.add_column(label, justify="right")
    stages.add_column("gate")
    for i, s in enumerate(r.stages):
        marker = "▶ " if i == r.current and r.active else "  "
        g = s.gate
        reasons = "; ".join(g.get("reasons", [])) if g else ""
        decision = g.get("decision", "") if g else ""
        stages.add_row(
            marker + s.name,
            _state(s.status),
            str(len(s.devices)),
            *(_fmt(_figure(g, k)) for k, _ in GATE_FIGURES),
            f"{decision}: {reasons}" if reasons else decision,
        )
    return stages


#: Where a rollout's gate from before metrics per task kept a figure.
_BEFORE_METRICS = {"metric_b": "accuracy_b", "metric_a": "accuracy_a"}


def _figure(gate: dict[str, Any], key: str) -> Any:
    if key in gate:
        return gate[key]
    if key == "metric" and "accuracy_b" in gate:
        return "accuracy"
    return gate.get(_BEFORE_METRICS.get(key, key))


def fleet_view(f: FleetPublic) -> Group:
    head = Text(f"fleet {f.fleet}: {f.devices} devices, {f.online} online", style="bold")
    if f.stale:
        head.append(f"\nstale update metadata: {', '.join(f.stale)}", style="yellow")
    by = Table(show_header=True, title_justify="left")
    by.add_column("version")
    by.add_column("devices", justify="right")
    for version, n in f.by_version.items():
        by.add_row(version, str(n))
    health = Table(show_header=True)
    health.add_column("health")
    health.add_column("devices", justify="right")
    for state, n in f.by_health.items():
        health.add_row(_state(state), str(n))
    models = Table(show_header=True)
    signed = any(m.ordered_sha256 for m in f.models.values())
    for col in ("model", "target", *(["signed order"] if signed else [])):
        models.add_column(col)
    for col in ("rollout in progress", "devices", "by version"):
        models.add_column(col)
    for name, m in f.models.items():
        versions = ", ".join(f"{v}: {n}" for v, n in m.by_version.items())
        ordered = [_version(m.ordered_version) if m.ordered_sha256 else "–"] if signed else []
        models.add_row(
            name,
            _version(m.target_version),
            *ordered,
            m.active_rollout or "–",
            str(m.devices),
            versions,
        )
    return Group(head, by, health, models)


def devices_table(listing: DevicesPublic, model: str | None = None) -> Table:
    """Every device's last report: on ``model`` when given, else on the device's first model
    (with the models it serves, when several)."""
    title = f"Devices of fleet {listing.fleet} ({listing.total})"
    t = Table(title=title + (f", serving {model}" if model else ""), title_justify="left")
    several = model is None and any(len(d.models) > 1 for d in listing.devices)
    for col in DEVICE_COLUMNS:
        t.add_column(col)
    if several:
        t.add_column("models")
    for d in listing.devices:
        on: DevicePublic | ServingPublic = d.models[model] if model else d
        c = on.counters
        metric = on.rolling_accuracy if on.metric in (None, "accuracy") else on.rolling_metric
        t.add_row(
            d.device_id,
            _state(d.health) + (Text(" stale", style="yellow") if d.stale else ""),
            _version(on.version) if d.health != "offline" else "?",
            _desired(on),
            (on.pinned_sha256 or "")[:12],
            _fmt(metric) + ("" if on.metric in (None, "accuracy") else f" {on.metric}"),
            _fmt(on.latency_ms_p99),
            str(c.predictions) if c else "–",
            str(c.fallback_predictions) if c else "–",
            _ago(d.last_seen),
            (on.last_error or "")[:60],
            *([", ".join(d.models)] if several else []),
        )
    return t


def _desired(d: DevicePublic | ServingPublic) -> str:
    if d.desired_sha256 and d.desired_sha256 == d.sha256:
        return "same"
    return (d.desired_sha256 or "–")[:12]
