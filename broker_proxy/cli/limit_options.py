"""The options that ask a grant for less than the policy allows, shared by `grant issue` and `exec`.

Why one place: the two commands issue the same grant, and a limit one of them forgot would be a
limit an operator could not lower for that route.
"""

from __future__ import annotations

import argparse


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """--concurrency, --cost-usd, --input-tokens, --output-tokens, --rate: each may only lower."""
    parser.add_argument("--concurrency", action="append", default=[],
                        metavar="[SECRET=]N", help="fewer requests in flight at once than the "
                        "policy's concurrency (never more)")
    parser.add_argument("--cost-usd", dest="cost_usd", action="append", default=[],
                        metavar="[SECRET=]USD", help="a smaller cost budget than the policy's, "
                        "e.g. 2.50 (never a larger one)")
    parser.add_argument("--input-tokens", dest="input_tokens", action="append", default=[],
                        metavar="[SECRET=]N", help="a smaller input-token budget than the "
                        "policy's (never a larger one)")
    parser.add_argument("--output-tokens", dest="output_tokens", action="append", default=[],
                        metavar="[SECRET=]N", help="a smaller output-token budget than the "
                        "policy's (never a larger one)")
    parser.add_argument("--rate", dest="rates", action="append", default=[],
                        metavar="[SECRET=]N/PER", help="a stricter rate than the policy's, e.g. "
                        "30/minute or openai=30/minute (never a looser one; repeat for more)")
