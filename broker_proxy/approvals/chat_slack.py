"""Approvals from Slack: a message with buttons per held request, and the clicks on them.

The message goes out through Slack's Web API (`chat.postMessage`) with the bot token from the
vault, from one daemon thread behind a bounded queue (outbox.py), so a slow Slack never delays
a decision.
A click comes back to `POST /v1/chat/slack/interactions` on the admin listener: Slack's
signature (its signing secret from the vault, five-minute window) is the caller's only
credential, checked with slack-sdk's own verifier before the body is even parsed. The user is
mapped to a role by the policy (`chat.slack.users`), must be allowed to DECIDE, and the message
is then updated with the outcome (`chat.update`) so the channel sees who decided.

slack-sdk is Slack's maintained client: its verifier is the reference implementation of the
signing scheme, and its WebClient takes a `base_url`, which the tests point at a stand-in.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from broker_proxy.approvals.chat_decision import (
    ChatUserRefused,
    ReadSecret,
    RefuseOwnGrant,
    chat_principal,
    decide_once,
    decided_answer,
    outcome,
)
from broker_proxy.approvals.chat_preview import escape, preview_text
from broker_proxy.approvals.desk import ApprovalDesk, HeldRequest
from broker_proxy.approvals.outbox import Outbox
from broker_proxy.http_routes import ApiError, Headers
from broker_proxy.policy.chat_rules import SlackRules

# slack_sdk is imported where Slack is called or its signature checked: about 0.05 s of CPU that
# every proxy start would pay, most of them with no Slack approvals configured.
if TYPE_CHECKING:
    from slack_sdk import WebClient

log = logging.getLogger("broker_proxy.approvals")

TIMEOUT_S = 5
ALLOW_ONCE, ALLOW_USES, DENY = "allow_once", "allow_uses", "deny"


def _summary(item: HeldRequest) -> str:
    return escape(f"{item.agent} ({item.task}) waits for approval: {item.shape.method} "
                   f"{item.shape.host}{item.shape.path} with {', '.join(item.secrets)}")


def held_blocks(item: HeldRequest, allow_uses: int, console: str | None) -> list[dict[str, object]]:
    """The Block Kit message for a held request: what it is, and three buttons."""
    def button(action: str, label: str, style: str | None = None) -> dict[str, object]:
        element: dict[str, object] = {"type": "button", "action_id": action, "value": item.id,
                                      "text": {"type": "plain_text", "text": label}}
        return element | ({"style": style} if style else {})

    shown = preview_text(item.preview)  # what the console shows: the body, the tool calls
    text = _summary(item) + (f"\n{shown}" if shown else "") + (
        f"\n<{console}/ui/#/approvals/{item.id}|Open in the console>" if console else "")
    return [{"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "actions", "block_id": "broker_hold", "elements": [
                button(ALLOW_ONCE, "Allow once", "primary"),
                button(ALLOW_USES, f"Allow {allow_uses} uses"),
                button(DENY, "Deny", "danger")]}]


def decided_blocks(item: HeldRequest) -> list[dict[str, object]]:
    return [{"type": "section", "text": {"type": "mrkdwn", "text": _summary(item)}},
            {"type": "context", "elements": [{"type": "mrkdwn",
                                              "text": escape(outcome(item))}]}]


def _client(rules: SlackRules, read_secret: ReadSecret) -> WebClient:
    from slack_sdk import WebClient

    return WebClient(token=read_secret(rules.bot_token), base_url=rules.api_url,
                     timeout=TIMEOUT_S)


class SlackNotifier:
    """Posts each held request to the policy's Slack channel (when `chat.slack` is set)."""

    def __init__(self, rules: Callable[[], SlackRules | None], read_secret: ReadSecret,
                 console_url: Callable[[], str | None], on_failure: Callable[[], None]) -> None:
        self._rules, self._read_secret = rules, read_secret
        self._console_url, self._on_failure = console_url, on_failure
        self._outbox = Outbox[HeldRequest]("approval-slack", self._deliver, on_failure)

    def notify(self, item: HeldRequest) -> None:
        if self._rules() is None:
            return
        self._outbox.put(item)

    def _deliver(self, item: HeldRequest) -> None:
        if (rules := self._rules()) is not None:  # the policy may have dropped it meanwhile
            self._post(rules, item)

    def _post(self, rules: SlackRules, item: HeldRequest) -> None:
        try:
            _client(rules, self._read_secret).chat_postMessage(
                channel=rules.channel, text=_summary(item),
                blocks=held_blocks(item, rules.allow_uses, self._console_url()))
        except Exception as error:  # a message that did not go out is the same to the desk
            log.warning("posting a held request to Slack failed: %s", type(error).__name__)
            self._on_failure()


@dataclass(frozen=True, slots=True)
class _Click:
    user: str
    team: str | None  # the workspace it came from (`team.id`)
    action: str
    hold_id: str
    channel: str | None
    ts: str | None


def _click(raw: bytes) -> _Click:
    """The one button click of a `block_actions` payload (form field `payload`, JSON)."""
    try:
        payload = json.loads(parse_qs(raw.decode(), strict_parsing=True)["payload"][0])
        action = payload["actions"][0]
        container = payload.get("container") or {}
        team = (payload.get("team") or {}).get("id")
        return _Click(str(payload["user"]["id"]), None if team is None else str(team),
                      str(action["action_id"]),
                      str(action["value"]), container.get("channel_id"),
                      container.get("message_ts"))
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        raise ApiError(400, "invalid_request", "not a Slack block_actions payload") from None


def slack_interaction(rules: SlackRules, read_secret: ReadSecret, desk: ApprovalDesk,
                      headers: Headers, raw: bytes,
                      refuse_own: RefuseOwnGrant | None = None) -> tuple[int, object]:
    """Verify Slack's signature, check the workspace, map the user, decide once, update the
    message."""
    from slack_sdk.signature import SignatureVerifier

    verifier = SignatureVerifier(read_secret(rules.signing_secret))
    try:
        valid = verifier.is_valid(raw, headers.get("X-Slack-Request-Timestamp"),
                                  headers.get("X-Slack-Signature"))
    except (ValueError, TypeError):
        # A timestamp that is not a number; a signature that is not ASCII (hmac.compare_digest
        # refuses such a str with TypeError): either way it does not verify.
        valid = False
    if not valid:
        raise ApiError(401, "signature_invalid",
                       "the Slack signature does not verify or is older than five minutes")
    click = _click(raw)
    if click.action not in (ALLOW_ONCE, ALLOW_USES, DENY):
        raise ApiError(400, "invalid_request", "unknown button")
    identity = f"slack:{click.user}"
    if rules.team_id is not None and click.team != rules.team_id:
        # A user id names someone in one workspace only: the same id clicking in another
        # workspace the app is installed in (same signing secret) is not the mapped person.
        raise ChatUserRefused(ApiError(403, "chat_team_unknown",
                                       "the click comes from a Slack workspace other than the "
                                       "policy's chat.slack.team_id"), identity, click.hold_id)
    principal = chat_principal(identity, rules.users.get(click.user), click.hold_id)
    item = decide_once(desk, click.hold_id, click.action != DENY, principal,
                       uses=rules.allow_uses if click.action == ALLOW_USES else None,
                       refuse_own=refuse_own)
    if click.channel and click.ts:
        # Off this thread: Slack wants the click answered within three seconds.
        threading.Thread(target=_update, args=(rules, read_secret, click.channel, click.ts, item),
                         name="approval-slack-update", daemon=True).start()
    return 200, decided_answer(item)


def _update(rules: SlackRules, read_secret: ReadSecret, channel: str, ts: str,
            item: HeldRequest) -> None:
    """The message now says who decided what, and has no buttons left to click."""
    try:
        _client(rules, read_secret).chat_update(
            channel=channel, ts=ts, text=escape(outcome(item)),
            blocks=decided_blocks(item))
    except Exception as error:  # decided either way; the audit says so
        log.warning("updating the Slack message failed: %s", type(error).__name__)
