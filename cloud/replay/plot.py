"""``--plot FILE``: windowed accuracy over the stream, edgeloop and each baseline, with
the known drifts marked (a PNG made with matplotlib, imported only here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import ConfigError


def plot_replay(result: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("--plot needs matplotlib: pip install matplotlib") from e
    window, first = result["window"], result["seed_rows"]
    fig, ax = plt.subplots(figsize=(10, 4.5))

    def line(series: list[float], label: str, **style: Any) -> None:
        xs = [first + window * (k + 1) for k in range(len(series))]
        ax.plot(xs, series, label=label, **style)

    line(
        result["windowed_accuracy"],
        f"edgeloop (int8, edges) {result['prequential_accuracy']:.3f}",
        linewidth=2.2,
        color="black",
    )
    for name, details in result.get("baseline_details", {}).items():
        line(
            details["windowed_accuracy"],
            f"{name} {details['prequential_accuracy']:.3f}",
            linewidth=1.2,
            alpha=0.8,
        )
    for n, d in enumerate(result["drift_rows"]):
        ax.axvline(d, color="red", linestyle="--", linewidth=1, label="drift" if n == 0 else None)
    ax.set_xlabel("row of the stream")
    ax.set_ylabel(f"accuracy over {window} rows")
    ax.set_title(
        f"{result['stream']}: prequential accuracy, label share {result['label_share']}, "
        f"delay {result['label_delay']} rows"
    )
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=110)
    except OSError as e:
        raise ConfigError(f"--plot {path}: cannot write it: {e.strerror}") from e
    finally:
        plt.close(fig)
