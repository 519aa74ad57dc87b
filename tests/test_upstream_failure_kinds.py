"""The kind of an upstream failure, from the texts mitmproxy 12.3 and the broker record."""

from __future__ import annotations

import pytest

from broker_proxy.decision.upstream_failure import KINDS, classify, description, dial_refusal
from broker_proxy.request.outbound import Denied

NOT_SENT = [
    ("[Errno 111] Connect call failed ('127.0.0.1', 9)", "connect_refused"),
    ("connection cancelled", "connect_timeout"),
    ("[Errno 110] Connection timed out", "connect_timeout"),
    ("Certificate verify failed: unable to get local issuer certificate", "tls_verify_failed"),
    ("The remote server does not speak TLS.", "tls_failed"),
    ("Connection killed: " + dial_refusal("address_not_allowed", "x is pinned to 10.0.0.1"),
     "address_not_allowed"),
    ("Connection killed: " + dial_refusal("resolve_failed", "cannot resolve x"),
     "resolve_failed"),
    ("[Errno 101] Network is unreachable", "connect_failed"),
    ("Client disconnected.", "client_gone"),
    ("client_gone: the request's use was given back before it was sent", "client_gone"),
]
SENT = [
    ("server closed connection", "upstream_closed"),
    ("Cannot parse HTTP response: b'HTTP/1.1 sk-secret Nope'", "invalid_response"),
    ("unexpected server response: b'junk'", "invalid_response"),
    ("Stream reset by client", "client_gone"),
    ("something new", "upstream_failed"),
]


@pytest.mark.parametrize(("message", "kind"), NOT_SENT)
def test_a_failure_before_sending_has_its_kind(message: str, kind: str) -> None:
    assert classify(message, sent=False) == kind


@pytest.mark.parametrize(("message", "kind"), SENT)
def test_a_failure_after_sending_has_its_kind(message: str, kind: str) -> None:
    assert classify(message, sent=True) == kind


def test_the_answer_names_the_grant_and_kind_and_never_the_failure_text() -> None:
    for kind in KINDS:
        body = Denied(502, "upstream_error", description(kind), "g_1", kind=kind).body()
        assert b'"kind": "' + kind.encode() + b'"' in body and b'"grant": "g_1"' in body
    assert description("not a kind") == KINDS["upstream_failed"]
