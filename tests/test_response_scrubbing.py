"""The response hooks' plan for one flow, on mitmproxy's own test flows (no proxy running).

The end-to-end proofs are in ``tests/security/test_e2e_response_path.py``; these pin the
choices that are hard to provoke from outside: a grant whose values could not all be resolved,
and a withheld answer to an upstream answer without a body.
"""

from __future__ import annotations

import json

from broker_proxy.addons import response_scrubbing
from mitmproxy import http
from mitmproxy.test import tflow

from broker_proxy.request.outbound import Allowed

VALUE = "sk-unit-0123456789abcdefghij"


def _flow(status: int, body: bytes, headers: dict[str, str] | None = None) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.response = http.Response.make(status, body, headers or {})
    return flow


def test_a_grant_whose_values_could_not_all_be_resolved_has_its_answer_withheld() -> None:
    verdict = Allowed(grant_id="g_1", scrub={"k": (VALUE, "{{secret:k}}")},
                      scrub_complete=False)
    flow = _flow(200, b"nothing secret here")
    response_scrubbing.on_response_headers(flow, verdict)
    assert flow.response is not None and flow.response.status_code == 502
    response_scrubbing.on_response(flow, verdict)
    assert json.loads(flow.response.content or b"")["error"] == "response_withheld"


def test_a_withheld_answer_gets_the_body_its_headers_announce_when_the_upstream_sent_none(
) -> None:
    verdict = Allowed(grant_id="g_1", scrub={"k": (VALUE, "{{secret:k}}")})
    flow = _flow(206, b"", {"Content-Length": "0"})
    response_scrubbing.on_response_headers(flow, verdict)
    assert flow.response is not None
    # mitmproxy never streams an answer that ended with its headers: it stores the empty body.
    flow.response.data.content = b""
    response_scrubbing.on_response(flow, verdict)
    body = flow.response.content or b""
    assert flow.response.status_code == 502 and json.loads(body)["grant"] == "g_1"
    assert flow.response.headers["content-length"] == str(len(body))


def test_nothing_to_scrub_and_no_transfer_coding_streams_untouched() -> None:
    flow = _flow(200, b"hello", {"Transfer-Encoding": "chunked"})
    response_scrubbing.on_response_headers(flow, Allowed(grant_id="g_1"))
    assert flow.response is not None and flow.response.stream is True
    assert response_scrubbing.STATE_KEY not in flow.metadata


def test_a_grant_whose_values_are_all_too_short_to_look_for_streams_untouched() -> None:
    # Such a value is never found (Scrubber.empty): the answer is not decoded, not re-framed.
    verdict = Allowed(grant_id="g_1", scrub={"k": ("xyz", "{{secret:k}}")})
    flow = _flow(200, b"a body", {"Content-Encoding": "gzip"})  # stored gzip-encoded
    assert flow.response is not None
    body = flow.response.raw_content
    assert body is not None and body.startswith(b"\x1f\x8b")
    response_scrubbing.on_response_headers(flow, verdict)
    assert flow.response.stream is True
    assert flow.response.headers["content-encoding"] == "gzip"
    assert flow.response.headers["content-length"] == str(len(body))
    assert response_scrubbing.STATE_KEY not in flow.metadata
    assert response_scrubbing.on_response(flow, verdict) == {}
    assert flow.response.raw_content == body


def test_a_grants_scrubber_is_reused_while_its_values_stay_and_renewed_when_one_changes(
) -> None:
    first = Allowed(grant_id="g_reuse", scrub={"k": (VALUE, "{{secret:k}}")})
    again = Allowed(grant_id="g_reuse", scrub={"k": (VALUE, "{{secret:k}}")})
    rotated = Allowed(grant_id="g_reuse", scrub={"k": (VALUE + "-rotated", "{{secret:k}}")})
    states = []
    for verdict in (first, again, rotated):
        flow = _flow(200, b"body " + verdict.scrub["k"][0].encode())
        response_scrubbing.on_response_headers(flow, verdict)
        assert response_scrubbing.on_response(flow, verdict) == {"k": 1}
        assert flow.response is not None and flow.response.content == b"body {{secret:k}}"
        states.append(flow.metadata[response_scrubbing.STATE_KEY])
    assert states[0].scrubber is states[1].scrubber
    assert states[2].scrubber is not states[1].scrubber  # the rotated value is looked for
    assert VALUE not in repr(response_scrubbing._SCRUBBERS)
