"""Where the cloud keeps its files unless its settings say otherwise.

The trainer writes version files into the blob directory and the API reads
them, so both default to the same place; in ``mode = "development"`` both use
a directory under the working directory, beside the key pair a development
trainer makes for itself.
"""

from __future__ import annotations

from pathlib import Path

#: Where a development trainer keeps the key pair it makes for itself.
DEV_KEY_DIR = Path(".edgeloop-dev")
#: Where the registry keeps version files unless ``blob_dir`` says otherwise.
PROD_BLOB_DIR = Path("/var/lib/edgeloop/blobs")
#: The same in development.
DEV_BLOB_DIR = DEV_KEY_DIR / "blobs"
