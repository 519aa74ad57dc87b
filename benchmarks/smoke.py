"""The `--smoke` flag every benchmark script takes.

Why: benchmarks that nothing runs rot (a changed signature made `core_bench.py` refuse every
decision, and only `make bench` showed it). `make test` runs each script once with `--smoke`
(tests/test_benchmarks_smoke.py): the same code paths at tiny sizes, in seconds. The figures of
a smoke run mean nothing; that it runs, and refuses to print figures of a broken setup, does.
"""

from __future__ import annotations

import argparse

HELP = ("tiny sizes, a few seconds: checks that this benchmark still runs (what `make test` "
        "does); the figures mean nothing")


def add_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true", help=HELP)
