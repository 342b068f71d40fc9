"""``python -m bench [--quick] [--json] [NAME ...]``: run the benchmarks and print
a table of figures and ratios against baselines measured in the same run."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

BENCHES = ("predict", "families", "http", "hotswap", "feedback", "verify", "fleet")


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument(
        "names",
        nargs="*",
        choices=[*BENCHES, []],
        metavar="NAME",
        help=f"benchmarks to run (default: all of {', '.join(BENCHES)})",
    )
    p.add_argument("--quick", action="store_true", help="shorter runs")
    p.add_argument("--json", action="store_true", help="print the results as JSON on the last line")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import importlib

    from bench.report import render
    from bench.setup import bench_env

    results = []
    for name in args.names or BENCHES:
        module = importlib.import_module(f"bench.{name}")
        with bench_env() as bench:
            print(f"running {name}…", file=sys.stderr, flush=True)
            got = module.run(bench, args.quick)  # one Result, or one per case
            results.extend(got if isinstance(got, list) else [got])
    render(results)
    if args.json:
        print(json.dumps([r.as_dict() for r in results]))
    return 0 if all(r.met for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
