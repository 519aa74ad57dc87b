"""The common way to build a credential-injecting proxy: a `mitmdump -s` script.

Used as the baseline in benchmarks/run.py: it swaps one placeholder in the Authorization header
and does nothing else (no grants, no audit, no scrubbing).
"""

import os

from mitmproxy import http

PLACEHOLDER = "{{secret:bench}}"
VALUE = os.environ.get("BENCH_SECRET", "")


def request(flow: http.HTTPFlow) -> None:
    value = flow.request.headers.get("authorization")
    if value and PLACEHOLDER in value:
        flow.request.headers["authorization"] = value.replace(PLACEHOLDER, VALUE)
