"""API tokens as a terminal table (rich): names, roles and devices, never the tokens."""

from __future__ import annotations

import time

from rich.table import Table

from shared.tokens import TokenRecord


def tokens_table(records: list[TokenRecord]) -> Table:
    t = Table(title="API tokens", title_justify="left")
    for col in ("name", "role", "device", "created", "by"):
        t.add_column(col)
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        t.add_row(r.name, r.role, r.device or "", created, r.created_by)
    return t
