"""``edgeloop keygen``: an Ed25519 signing key pair for a fleet's versions."""

from __future__ import annotations

import argparse
from pathlib import Path


def keygen_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out", type=Path, required=True, help="directory for signing.key and signing.pub"
    )


def keygen(args: argparse.Namespace) -> int:
    from shared.signing import write_keypair

    private, public = write_keypair(args.out)
    print(
        f"wrote {private} (keep it secret; the trainer's signing_key) and {public} (for the edges)"
    )
    return 0
