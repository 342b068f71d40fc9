"""One result row per benchmark and the table that prints them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Result:
    name: str
    ours: float
    baseline: float
    unit: str
    ratio: float
    goal: str
    met: bool
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def at_most(
    name: str, ours: float, baseline: float, unit: str, limit: float, **details: Any
) -> Result:
    ratio = ours / baseline if baseline else float("inf")
    return Result(
        name, ours, baseline, unit, round(ratio, 3), f"<= {limit}x", ratio <= limit, details
    )


def at_least(
    name: str, ours: float, baseline: float, unit: str, limit: float, **details: Any
) -> Result:
    ratio = ours / baseline if baseline else 0.0
    return Result(
        name, ours, baseline, unit, round(ratio, 3), f">= {limit}x", ratio >= limit, details
    )


def render(results: list[Result]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="edgeloop benchmarks")
    for col in ("benchmark", "edgeloop", "baseline", "unit", "ratio", "goal", "met"):
        t.add_column(col, justify="left" if col == "benchmark" else "right")
    for r in results:
        t.add_row(
            r.name,
            f"{r.ours:,.2f}",
            f"{r.baseline:,.2f}",
            r.unit,
            f"{r.ratio:.3f}",
            r.goal,
            "[green]yes[/]" if r.met else "[red]no[/]",
        )
    Console().print(t)
    for r in results:
        if r.details:
            Console().print(
                f"[dim]{r.name}: " + ", ".join(f"{k}={v}" for k, v in r.details.items()) + "[/]"
            )
