"""``python -m edge``: the same as ``edgeloop-edge``."""

import sys

from edge.cli import main

sys.exit(main())
