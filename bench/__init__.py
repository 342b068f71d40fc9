"""edgeloop benchmarks: each measures edgeloop and a baseline in the same run
and reports the ratio against a goal. Run with ``make bench`` or
``python -m bench [--quick] [--json] [NAME ...]``."""
