"""What a person is shown of a held request, and what an approval binds to (no proxy needed)."""

from __future__ import annotations

from pathlib import Path

from broker_proxy.approvals.digest import carried, request_shape
from broker_proxy.approvals.preview import (
    MAX_BODY_TEXT,
    build_preview,
    preview_level,
    shown_digest,
)
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.request_scan import find_placeholders
from broker_proxy.policy.loader import load_policy, load_policy_text
from broker_proxy.request.outbound import OutboundRequest

POLICY = """\
version: 1
secrets:
  pay:
    from: env:PAY
    inject: [header, query, body]
    destinations: [{host: api.pay.test}]
  mail:
    from: env:MAIL
    destinations: [{host: api.pay.test}]
agents:
  bot: {secrets: [pay, mail]}
"""
SCANNER = ActivePolicy.build(load_policy_text(POLICY, "p.yaml")).scanner
AUTH = ("Authorization", "Bearer {{secret:pay}}")


def request(body: bytes = b"", headers: tuple[tuple[str, str], ...] = (AUTH,),
            query: str = "") -> OutboundRequest:
    return OutboundRequest("POST", "https", "api.pay.test", 443, "/v1/refunds", query, headers,
                           body)


def shape_of(req: OutboundRequest):
    return request_shape(req, carried(SCANNER, req, find_placeholders(SCANNER, req)), SCANNER)


def test_json_is_pretty_printed_and_placeholders_are_named() -> None:
    req = request(b'{"amount":1200,"to":"{{secret:pay}}"}',
                  (AUTH, ("Content-Type", "application/json")))
    preview = build_preview(req, SCANNER, shape_of(req).carries)
    assert preview["body"]["kind"] == "json"
    assert preview["body"]["text"] == '{\n  "amount": 1200,\n  "to": "{{secret:pay}}"\n}'
    assert preview["placeholders"] == [{"text": "{{secret:pay}}", "secret": "pay"}]
    assert preview["carries"] == [{"secret": "pay", "where": "body"},
                                  {"secret": "pay", "where": "header:authorization"}]


def test_form_fields_are_listed_and_binary_is_summarised() -> None:
    form = request(b"amount=5&note=hi+there", (AUTH, ("Content-Type",
                                                     "application/x-www-form-urlencoded")))
    assert build_preview(form, SCANNER, ())["body"]["fields"] == [["amount", "5"],
                                                                 ["note", "hi there"]]
    binary = build_preview(request(b"\x00\x01\xffPNG" * 10), SCANNER, ())["body"]
    assert (binary["kind"], binary["text"], binary["size"]) == ("binary", None, 60)


def test_the_preview_is_bounded_and_hides_what_it_must() -> None:
    big = request(b"x" * (MAX_BODY_TEXT * 3),
                  (AUTH, ("Cookie", "session=abc"), ("Proxy-Authorization", "Basic Zm9v")))
    preview = build_preview(big, SCANNER, ())
    assert len(preview["body"]["text"]) == MAX_BODY_TEXT and preview["body"]["truncated"]
    headers = dict(preview["headers"])
    assert "Proxy-Authorization" not in headers and "abc" not in headers["Cookie"]


def test_a_destination_can_reduce_the_preview() -> None:
    req = request(b'{"amount": 1}', query="card=4111")
    headers_only = build_preview(req, SCANNER, (), "headers")
    assert headers_only["body"]["kind"] == "hidden" and headers_only["body"]["text"] is None
    assert headers_only["headers"] is not None
    none = build_preview(req, SCANNER, (), "none")
    assert none["headers"] is None and none["query"] is None and none["body"] is None
    assert preview_level(["full", "none", "headers"]) == "none"
    assert preview_level(["full", "headers"]) == "headers" and preview_level([]) == "full"
    assert shown_digest(none) != shown_digest(headers_only)


def test_the_digest_binds_the_secrets_and_where_they_sit() -> None:
    base = shape_of(request(b"same"))
    other_secret = shape_of(request(b"same", (("Authorization", "Bearer {{secret:mail}}"),)))
    one_more = shape_of(request(b"same", (AUTH, ("X-Mail", "{{secret:mail}}"))))
    moved = shape_of(request(b"same", (("X-Pay", "Bearer {{secret:pay}}"),)))
    digests = {base.digest, other_secret.digest, one_more.digest, moved.digest}
    assert len(digests) == 4
    assert one_more.carries == ("mail@header:x-mail", "pay@header:authorization")


def test_the_digest_binds_the_headers_that_matter_only() -> None:
    base = shape_of(request(b"{}", (AUTH, ("Content-Type", "application/json"))))
    noisy = shape_of(request(b"{}", (("X-Request-Id", "r-9"), AUTH,
                                     ("Content-Type", "application/json"), ("Date", "now"))))
    retyped = shape_of(request(b"{}", (AUTH, ("Content-Type", "text/plain"))))
    assert base.digest == noisy.digest
    assert base.digest != retyped.digest


def test_the_policy_in_docs_approvals_checks(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parent.parent / "docs" / "approvals.md").read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(block)
    policy = load_policy(policy_file)
    previews = [d.approval_preview for d in policy.secrets["payments"].destinations]
    assert previews == ["full", "headers"] and policy.secrets["payments"].per_request_approval
