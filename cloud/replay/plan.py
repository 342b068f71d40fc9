"""What a replay does with each row: the options, checked before anything starts, and
the plan they make (which rows bootstrap, which labels are sent and when).

Test-then-train: row ``i`` (after the first ``seed_rows``) is predicted first; its
label is sent ``label_delay`` rows later (after row ``i + label_delay`` has been
predicted) when the row is one of the ``label_share`` drawn under ``seed``. Labels
still due when the stream ends are not sent: nobody would be served after them.
edgeloop and the baselines follow the same plan, so their figures count the same
rows and learn from the same labels at the same points of the stream.

>>> p = Plan.of(rows=10, seed_rows=4, label_share=1.0, label_delay=2, seed=0)
>>> [p.label_sent_after(i) for i in range(4, 10)]
[None, None, 4, 5, 6, 7]
>>> p.labels_sent
4
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from shared.errors import InputError

#: Rows a replay streams at most with ``--quick`` (a csv's first rows).
QUICK_ROWS = 2_000
#: Fewest rows the bootstrap may learn from.
MIN_SEED_ROWS = 20


@dataclass(frozen=True)
class ReplayOptions:
    dataset: str
    label_column: str | None = None
    edges: int = 1
    rate: float = 50.0  # rows a second in total; 0: as fast as the loop takes them
    label_share: float = 1.0
    label_delay: int = 0
    seed_rows: int | None = None  # None: default_seed_rows
    seed: int = 0
    quick: bool = False
    plot: Path | None = None
    keep: bool = False

    def check(self) -> None:
        """The options that cannot work whatever the stream (``InputError``)."""
        if not 0.0 < self.label_share <= 1.0:
            raise InputError(f"--label-share {self.label_share}: must be in (0, 1]")
        if self.label_delay < 0:
            raise InputError(f"--label-delay {self.label_delay}: must be 0 or more rows")
        if self.rate < 0:
            raise InputError(
                f"--rate {self.rate}: rows a second must be 0 (as fast as possible) or more"
            )
        if self.edges < 1:
            raise InputError(f"--edges {self.edges}: at least one edge")
        if self.seed_rows is not None and self.seed_rows < MIN_SEED_ROWS:
            raise InputError(f"--seed-rows {self.seed_rows}: at least {MIN_SEED_ROWS}")


def default_seed_rows(rows: int) -> int:
    """A small share of the stream: 5%, at least 200 rows, at most 1000.

    >>> default_seed_rows(12_000), default_seed_rows(1_250)
    (600, 200)
    """
    return min(1000, max(200, rows // 20))


@dataclass(frozen=True)
class Plan:
    rows: int
    seed_rows: int
    label_delay: int
    labeled: npt.NDArray[np.bool_]  # [rows]: the row's label is one the user gives

    @classmethod
    def of(
        cls, *, rows: int, seed_rows: int, label_share: float, label_delay: int, seed: int
    ) -> Plan:
        """The plan for a stream of ``rows`` (``InputError`` when it does not fit)."""
        if seed_rows >= rows:
            raise InputError(
                f"--seed-rows {seed_rows}: the stream has only {rows} rows; leave some to replay"
            )
        streamed = rows - seed_rows
        if label_delay >= streamed:
            raise InputError(
                f"--label-delay {label_delay}: longer than the {streamed} rows replayed "
                "after the seed rows; no label would ever arrive"
            )
        labeled = np.random.default_rng(seed).random(rows) < label_share
        labeled[:seed_rows] = True
        return cls(rows, seed_rows, label_delay, labeled)

    @property
    def streamed(self) -> int:
        """Rows predicted (and scored) after the seed rows."""
        return self.rows - self.seed_rows

    def label_sent_after(self, i: int) -> int | None:
        """The row whose label is sent once row ``i`` has been predicted, if any."""
        j = i - self.label_delay
        return j if j >= self.seed_rows and self.labeled[j] else None

    @property
    def labels_sent(self) -> int:
        return int(self.labeled[self.seed_rows : self.rows - self.label_delay].sum())

    def labeled_rows(self) -> list[int]:
        """The streamed rows (0 = the first after the seed rows) whose labels are sent."""
        last = self.streamed - self.label_delay
        return [s for s in range(last) if self.labeled[self.seed_rows + s]]

    def sends(self) -> npt.NDArray[np.int64]:
        """[streamed]: 1 where a label is sent after predicting that row."""
        out = np.zeros(self.streamed, np.int64)
        out[[s + self.label_delay for s in self.labeled_rows()]] = 1
        return out
