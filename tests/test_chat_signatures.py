"""The chat door's pieces without a proxy: the webhook signature's window and comparison, and
a Slack message that shows an agent's request without letting it mention or link anyone."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from broker_proxy.approvals.chat_door import ChatDoor
from broker_proxy.approvals.chat_preview import preview_text
from broker_proxy.approvals.chat_slack import held_blocks
from broker_proxy.approvals.chat_webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    verify,
)
from broker_proxy.approvals.desk import HeldRequest
from broker_proxy.approvals.digest import RequestShape
from broker_proxy.audit.errors import AuditError
from broker_proxy.http_routes import ApiError
from broker_proxy.policy.chat_rules import ChatRules, ChatWebhookRules, SlackRules

KEY = "k" * 32
BODY = b'{"request":"h_0123456789abcdef","decision":"deny"}'


def _headers(timestamp: str, signed: str) -> dict[str, str]:
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: signed}


def test_a_body_signed_now_verifies() -> None:
    verify(KEY, _headers("1000", signature(KEY, "1000", BODY)), BODY, now=lambda: 1000 + 299)


@pytest.mark.parametrize(("timestamp", "signed_body", "now"), [
    ("1000", BODY, 1000 + 301),  # stale
    ("1000", BODY, 1000 - 301),  # from the future
    ("1000", BODY + b" ", 1000),  # another body
    ("10e2", BODY, 1000),  # not a plain number
    ("\u00b2", BODY, 1000),  # a digit to str.isdigit, not to int() (latin-1 header)
])
def test_a_stale_or_other_signature_is_refused(timestamp: str, signed_body: bytes,
                                               now: int) -> None:
    with pytest.raises(ApiError) as refused:
        verify(KEY, _headers(timestamp, signature(KEY, timestamp, signed_body)), BODY,
               now=lambda: now)
    assert (refused.value.status, refused.value.code) == (401, "signature_invalid")


def test_the_slack_message_escapes_what_the_agent_controls() -> None:
    shape = RequestShape("POST", "https", "api.example.com", 443, "/v1/<!channel>&<http://x|y>",
                         "", 0, "", 0, ("api_key@header",), "", "")
    now = datetime.now(UTC)
    item = HeldRequest("h_0123456789abcdef", "g_1", "bot", "task <@U1>", ("api_key",), shape,
                       {}, "", now, now)
    text = held_blocks(item, 10, None)[0]["text"]["text"]  # type: ignore[index]
    assert "<" not in text and ">" not in text
    assert "&lt;!channel&gt;&amp;&lt;http://x|y&gt;" in text


def test_the_slack_message_shows_the_preview_the_decision_records_bounded_and_escaped() -> None:
    shape = RequestShape("POST", "https", "api.example.com", 443, "/v1/refunds", "", 0, "", 0,
                         ("api_key@header",), "", "")
    now = datetime.now(UTC)
    preview = {"tools": [{"method": "tools/call", "name": "refund", "truncated": False,
                          "arguments": '{"amount": 99999}'}],
               "query": {"text": "order=7"},
               "body": {"kind": "text", "text": "<@U1> ```break out``` " + "x" * 5000,
                        "truncated": True}}
    item = HeldRequest("h_0123456789abcdef", "g_1", "bot", "task", ("api_key",), shape,
                       preview, "", now, now)
    text = held_blocks(item, 10, None)[0]["text"]["text"]  # type: ignore[index]
    assert "tool *refund*" in text and '```{"amount": 99999}```' in text
    assert "query `order=7`" in text and "&lt;@U1&gt;" in text
    assert "```break out```" not in text  # the agent's text cannot close the code block
    assert len(text) < 3000 and text.endswith("(cut: open the console)")
    assert preview_text({"body": {"kind": "empty"}}) == ""


class _Audit:
    """Keeps what the chat door appends; `broken` makes every append fail like a full disk."""

    def __init__(self, broken: bool = False) -> None:
        self.records: list[tuple[str, dict[str, object]]] = []
        self.broken = broken

    def append(self, event: str, *, durable: bool = False, **fields: object) -> object:
        if self.broken:
            raise AuditError("the disk is full")
        self.records.append((event, fields))
        return None


@pytest.mark.parametrize(("body", "by", "reason"), [
    (b'{"request":"h_0123456789abcdef","decision":"allow","user":"mallory"}',
     "webhook:bridge:mallory", "chat_user_unknown"),
    (b'{"request":"h_0123456789abcdef","decision":"allow","user":"bob"}',
     "webhook:bridge:bob", "role_required"),
    (b'{"request":"not-a-hold","decision":"allow","user":"bob"}',
     "webhook:bridge:bob", "role_required"),
])
@pytest.mark.parametrize("broken", [False, True])
def test_a_refused_chat_user_is_audited_and_still_refused(body: bytes, by: str, reason: str,
                                                          broken: bool) -> None:
    rules = ChatRules(webhooks={"bridge": ChatWebhookRules("bridge", "bridge-hmac",
                                                           users={"bob": "viewer"})})
    audit = _Audit(broken)
    door = ChatDoor(cast(Any, None), lambda: rules, lambda name: KEY, audit)
    timestamp = str(int(time.time()))
    with pytest.raises(ApiError) as refused:
        door.answer("POST", "/v1/chat/webhooks/bridge",
                    _headers(timestamp, signature(KEY, timestamp, body)), lambda: body,
                    "192.0.2.9")
    assert (refused.value.status, refused.value.code) == (403, reason)
    hold = "h_0123456789abcdef" if b"h_01" in body else None
    assert audit.records == ([] if broken else [("decision_refused", {
        "decision": "deny", "reason": reason, "by": by, "hold": hold, "source": "192.0.2.9"})])


@pytest.mark.parametrize("signed", ["v0=\u00e9" + "0" * 63, "v0=" + "0" * 64])
def test_a_slack_signature_that_does_not_verify_is_a_401(signed: str) -> None:
    """Not ASCII (a latin-1 header byte) makes hmac.compare_digest raise TypeError: that is a
    signature that does not verify too, a 401 the door counts, not an unhandled error."""
    rules = ChatRules(slack=SlackRules("slack-bot", "slack-signing", "C1"))
    door = ChatDoor(cast(Any, None), lambda: rules, lambda name: KEY, _Audit())
    headers = {"X-Slack-Request-Timestamp": str(int(time.time())), "X-Slack-Signature": signed}
    with pytest.raises(ApiError) as refused:
        door.answer("POST", "/v1/chat/slack/interactions", headers, lambda: b"payload=%7B%7D",
                    "192.0.2.9")
    assert (refused.value.status, refused.value.code) == (401, "signature_invalid")
