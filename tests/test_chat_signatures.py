"""The chat door's pieces without a proxy: the webhook signature's window and comparison, and
a Slack message that shows an agent's request without letting it mention or link anyone."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from broker_proxy.approvals.chat_slack import held_blocks
from broker_proxy.approvals.chat_webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    signature,
    verify,
)
from broker_proxy.approvals.desk import HeldRequest
from broker_proxy.approvals.digest import RequestShape
from broker_proxy.http_routes import ApiError

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
