"""What a CLI command prints: the API's JSON on one line, or a rich rendering."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def show(args: argparse.Namespace, raw: Any, renderable: Any) -> int:
    """``raw`` as one JSON line with ``--json``, else ``renderable`` in the terminal."""
    if args.json:
        sys.stdout.write(json.dumps(raw, separators=(",", ":")) + "\n")
        return 0
    from rich.console import Console

    Console().print(renderable)
    return 0
