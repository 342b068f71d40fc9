"""API tokens as a terminal table (rich): names, roles and devices, never the tokens."""

from __future__ import annotations

import time

from rich.table import Table

from shared.tokens import TokenRecord


def tokens_table(records: list[TokenRecord]) -> Table:
    t = Table(title="API tokens", title_justify="left")
    for col in ("name", "role", "device", "created", "expires", "by"):
        t.add_column(col)
    now = time.time()
    for r in records:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created_at))
        if r.expires_at is None:
            expires = "never"
        else:
            expires = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.expires_at))
            expires += " (expired)" if r.expired(now) else ""
        t.add_row(r.name, r.role, r.device or "", created, expires, r.created_by)
    return t
