"""The policy's `chat:` section: names of vault entries and user roles, checked at load, and
carried whole through the policy loader's child process."""

from __future__ import annotations

import io

import pytest

from broker_proxy.policy.chat_rules import ChatWebhookRules, SlackRules
from broker_proxy.policy.diff import diff_policies
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.runtime import policy_worker

CHAT = """\
version: 1
chat:
  slack:
    bot_token: slack-bot-token
    signing_secret: slack-signing-secret
    channel: C0APPROVE
    users:
      U024BE7LH: approver
      U0VIEWER1: viewer
  webhooks:
    bridge:
      secret: bridge-hmac
      users: {alice: admin}
"""


def test_the_chat_section_names_vault_entries_and_roles() -> None:
    chat = load_policy_text(CHAT, "p.yaml").chat
    assert chat is not None
    assert chat.slack == SlackRules("slack-bot-token", "slack-signing-secret", "C0APPROVE",
                                    {"U024BE7LH": "approver", "U0VIEWER1": "viewer"})
    assert chat.webhooks == {"bridge": ChatWebhookRules("bridge", "bridge-hmac", "approver",
                                                        {"alice": "admin"})}


def test_a_policy_without_chat_has_none() -> None:
    assert load_policy_text("version: 1\n", "p.yaml").chat is None


@pytest.mark.parametrize(("change", "message"), [
    (("C0APPROVE", "general"), "chat.slack.channel: must be a channel id"),
    (("U0VIEWER1: viewer", "U0VIEWER1: boss"), "unknown role 'boss'"),
    (("bridge-hmac", "'0123 secret value'"), "must name a vault entry"),
    (("    bot_token: slack-bot-token\n", ""), 'missing required field "bot_token"'),
    (("    channel:", "    chanel:"), 'unknown field "chanel"'),
    (("    channel:", "    api_url: http://gateway.example.com/api/\n    channel:"),
     "chat.slack.api_url: must be an https:// URL (http:// only on this machine"),
])
def test_a_bad_chat_section_is_one_line_per_problem(change: tuple[str, str],
                                                    message: str) -> None:
    with pytest.raises(PolicyError) as refused:
        load_policy_text(CHAT.replace(*change), "p.yaml")
    assert message in str(refused.value)
    assert "0123 secret value" not in str(refused.value), "a pasted value is never echoed"


def test_chat_rules_come_back_from_the_loader_child_equal() -> None:
    out = io.BytesIO()
    policy_worker.write_answer(CHAT.encode(), "p.yaml", out)
    assert policy_worker.read_answer(out.getvalue(), "p.yaml", 0, b"") == \
        load_policy_text(CHAT, "p.yaml")


def test_the_slack_api_may_be_plain_http_only_on_this_machine() -> None:
    for url in ("https://gateway.example.com/api/", "http://127.0.0.1:8080/api/"):
        chat = load_policy_text(CHAT.replace("    channel:", f"    api_url: {url}\n    channel:"),
                                "p.yaml").chat
        assert chat is not None and chat.slack is not None and chat.slack.api_url == url


def test_policy_diff_flags_a_new_chat_approver_and_a_raised_role_as_widening() -> None:
    old = load_policy_text(CHAT, "old.yaml")
    new = load_policy_text(CHAT.replace("U0VIEWER1: viewer", "U0VIEWER1: approver")
                           .replace("      U024BE7LH: approver\n", ""), "new.yaml")
    changes = [(c.detail, c.widening) for c in diff_policies(old, new) if c.subject == "chat"]
    assert changes == [("slack:U024BE7LH: approver -> no role", False),
                       ("slack:U0VIEWER1: viewer -> approver", True)]
