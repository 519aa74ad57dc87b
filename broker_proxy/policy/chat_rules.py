"""The policy's ``chat:`` section: who may decide held requests from Slack or a signed webhook.

```yaml
chat:
  slack:
    bot_token: slack-bot-token            # names of vault entries (`broker-proxy secret set`),
    signing_secret: slack-signing-secret  # never the values themselves
    channel: C0123456789                  # where held requests are posted
    team_id: T0123456789                  # the workspace whose clicks count (else: warning)
    allow_uses: 10                        # what the "allow N" button allows (default 10)
    users:
      U024BE7LH: approver
      U0G9QF9C6: viewer
      U0ALICE01: {role: approver, person: alice@example.com}  # the same person as oidc:alice@...
  webhooks:
    pager-bridge:
      secret: pager-bridge-hmac           # vault entry holding the shared HMAC key
      role: approver                      # the role of the webhook itself (default approver)
      users: {alice: approver}            # optional: callers named in the body, and their roles
```

A user's `person` says who they are elsewhere (an OpenID Connect email or subject, a CLI name),
so separation of duties knows that `slack:U0ALICE01` approving a grant `oidc:alice@example.com`
issued is one person deciding their own grant (sign_in/access.py `person_key`).

Only names of vault entries are here, so the policy file can be reviewed and committed without
carrying a token; the values are read from the vault each time they are used, so a `secret set`
takes effect without a reload. Parsed at load time with the loader's checker, so each problem is
reported as FILE:LINE:COL like every other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import yaml

from broker_proxy.policy.sign_in_fields import LOOPBACK_HOSTS, SECRET_NAME

if TYPE_CHECKING:
    from broker_proxy.policy.checking import NodeChecker

ROLES = ("viewer", "approver", "admin")
SLACK_API = "https://slack.com/api/"
DEFAULT_ALLOW_USES = 10
MAX_ALLOW_USES = 10_000  # the approval desk's own bound
_WEBHOOK_NAME = SECRET_NAME  # a vault entry's name rule (secrets/vault.py)
# Slack ids (U024BE7LH, W0123) and a webhook's caller names: short, printable, no separators.
_USER = re.compile(r"[A-Za-z0-9._@+-]{1,64}")
_CHANNEL = re.compile(r"[A-Z0-9]{2,32}")
_TEAM = _CHANNEL  # T0123456789 (E... for an Enterprise Grid organisation)
# An email, an OIDC subject or a CLI name: printable ASCII without spaces, as identities are.
_PERSON = re.compile(r"[!-~]{1,200}")


@dataclass(frozen=True, slots=True)
class SlackRules:
    bot_token: str  # vault entry: the bot's xoxb- token (chat:write)
    signing_secret: str  # vault entry: the app's signing secret
    channel: str
    users: dict[str, str] = field(default_factory=dict)  # Slack user id -> role name
    allow_uses: int = DEFAULT_ALLOW_USES
    api_url: str = SLACK_API  # Slack's Web API; tests point it at a local stand-in
    # The workspace whose clicks count: None accepts any workspace that signs with the app's
    # secret (an app installed in several workspaces shares it), matched on user id alone.
    team_id: str | None = None
    people: dict[str, str] = field(default_factory=dict)  # Slack user id -> `person`


@dataclass(frozen=True, slots=True)
class ChatWebhookRules:
    name: str
    secret: str  # vault entry: the shared HMAC-SHA256 key
    role: str = "approver"
    users: dict[str, str] = field(default_factory=dict)  # caller named in the body -> role
    people: dict[str, str] = field(default_factory=dict)  # caller -> `person`, when given


@dataclass(frozen=True, slots=True)
class ChatRules:
    slack: SlackRules | None = None
    webhooks: dict[str, ChatWebhookRules] = field(default_factory=dict)


def chat_roles(chat: ChatRules | None) -> dict[str, str]:
    """Every chat identity the policy gives a role, as the audit names it (`slack:U024BE7LH`,
    `webhook:bridge`, `webhook:bridge:alice`): what `policy diff` compares."""
    roles: dict[str, str] = {}
    if chat is None:
        return roles
    if chat.slack is not None:
        roles |= {f"slack:{user}": role for user, role in chat.slack.users.items()}
    for name, hook in chat.webhooks.items():
        roles[f"webhook:{name}"] = hook.role
        roles |= {f"webhook:{name}:{user}": role for user, role in hook.users.items()}
    return roles


def chat_people(chat: ChatRules | None) -> dict[str, str]:
    """Each chat identity the policy names a `person` for (`slack:U0ALICE01` -> the person):
    what `policy diff` compares, since dropping one lets that user approve their own grants."""
    people: dict[str, str] = {}
    if chat is None:
        return people
    if chat.slack is not None:
        people |= {f"slack:{user}": person for user, person in chat.slack.people.items()}
    for name, hook in chat.webhooks.items():
        people |= {f"webhook:{name}:{user}": person for user, person in hook.people.items()}
    return people


def parse_chat(root: yaml.Node | None, checker: NodeChecker) -> ChatRules | None:
    """The ``chat:`` section of the policy's root mapping, or None without one."""
    node = _child(root, "chat")
    if node is None or node.tag.endswith(":null"):
        return None
    fields = checker.fields(node, "chat", "chat", node)
    if fields is None:
        return None
    slack = _slack(fields["slack"][1], checker) if "slack" in fields else None
    webhooks: dict[str, ChatWebhookRules] = {}
    if "webhooks" in fields:
        webhooks = _webhooks(fields["webhooks"][1], checker)
    return ChatRules(slack, webhooks)


def _child(node: yaml.Node | None, name: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    return next((value for key, value in node.value if key.value == name), None)


def _slack(node: yaml.Node, checker: NodeChecker) -> SlackRules | None:
    fields = checker.fields(node, "chat.slack", "chat_slack", node)
    if fields is None or not {"bot_token", "signing_secret", "channel"} <= set(fields):
        return None
    before = len(checker.issues)
    token = _secret_name(fields["bot_token"][1], "chat.slack.bot_token", checker)
    signing = _secret_name(fields["signing_secret"][1], "chat.slack.signing_secret", checker)
    channel = checker.string(fields["channel"][1], "chat.slack.channel", "a channel id")
    if channel is not None and not _CHANNEL.fullmatch(channel):
        checker.report(fields["channel"][1], "chat.slack.channel",
                       "must be a channel id such as C0123456789 (not its #name)")
    uses = DEFAULT_ALLOW_USES
    if "allow_uses" in fields:
        uses = checker.integer(fields["allow_uses"][1], "chat.slack.allow_uses") or uses
        if not 1 <= uses <= MAX_ALLOW_USES:
            checker.report(fields["allow_uses"][1], "chat.slack.allow_uses",
                           f"must be from 1 to {MAX_ALLOW_USES}")
    api_url = SLACK_API
    if "api_url" in fields:
        api_url = _url(fields["api_url"][1], "chat.slack.api_url", checker) or SLACK_API
    users, people = _users(fields["users"][1], "chat.slack.users", checker) \
        if "users" in fields else ({}, {})
    team = checker.string(fields["team_id"][1], "chat.slack.team_id", "a workspace id") \
        if "team_id" in fields else None
    if team is not None and not _TEAM.fullmatch(team):
        checker.report(fields["team_id"][1], "chat.slack.team_id",
                       "must be a workspace id such as T0123456789 (not its name)")
    if len(checker.issues) != before or token is None or signing is None or channel is None:
        return None
    return SlackRules(token, signing, channel, users, uses, api_url, team, people)


def _webhooks(node: yaml.Node, checker: NodeChecker) -> dict[str, ChatWebhookRules]:
    built: dict[str, ChatWebhookRules] = {}
    if not checker.kind(node, "chat.webhooks", yaml.MappingNode, "a mapping"):
        return built
    for key, value in node.value:
        path = f"chat.webhooks.{key.value}"
        if not _WEBHOOK_NAME.fullmatch(str(key.value)):
            checker.report(key, path, "a webhook name is a letter, then up to 63 letters, "
                                      'digits, "_", "." or "-"')
            continue
        fields = checker.fields(value, path, "chat_webhook", value)
        if fields is None or "secret" not in fields:
            continue
        secret = _secret_name(fields["secret"][1], f"{path}.secret", checker)
        role = _role(fields["role"][1], f"{path}.role", checker) if "role" in fields \
            else "approver"
        users, people = _users(fields["users"][1], f"{path}.users", checker) \
            if "users" in fields else ({}, {})
        if secret is not None and role is not None:
            built[key.value] = ChatWebhookRules(key.value, secret, role, users, people)
    return built


def _secret_name(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    name = checker.string(node, path, "the name of a vault entry")
    if name is not None and not SECRET_NAME.fullmatch(name):
        # Never echo it: someone may have pasted the token itself here.
        checker.report(node, path, "must name a vault entry (`broker-proxy secret set NAME`), "
                                   "not hold the value")
        return None
    return name


def _role(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    role = checker.string(node, path, "a role")
    if role is not None and role not in ROLES:
        checker.report(node, path, f"unknown role {role!r}: expected one of {', '.join(ROLES)}")
        return None
    return role


def _users(node: yaml.Node, path: str,
           checker: NodeChecker) -> tuple[dict[str, str], dict[str, str]]:
    """user -> role, and user -> person for those written `{role: ..., person: ...}`."""
    users: dict[str, str] = {}
    people: dict[str, str] = {}
    if not checker.kind(node, path, yaml.MappingNode, "a mapping of user ids to roles"):
        return users, people
    for key, value in node.value:
        user = str(key.value)
        if not _USER.fullmatch(user):
            checker.report(key, f"{path}.{user}", "a user id is 1-64 letters, digits or ._@+-")
            continue
        role_node, person = value, None
        if isinstance(value, yaml.MappingNode):
            fields = checker.fields(value, f"{path}.{user}", "chat_user", value)
            if fields is None or "role" not in fields:
                continue
            role_node = fields["role"][1]
            if "person" in fields:
                person = _person(fields["person"][1], f"{path}.{user}.person", checker)
        if (role := _role(role_node, f"{path}.{user}", checker)) is not None:
            users[user] = role
            if person is not None:
                people[user] = person
    return users, people


def _person(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    person = checker.string(node, path, "an email, an OpenID Connect subject or a CLI name")
    if person is not None and not _PERSON.fullmatch(person):
        checker.report(node, path, "1-200 printable characters without spaces")
        return None
    return person


def _url(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    url = checker.string(node, path, "an http(s) URL")
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        checker.report(node, path, "must be an http:// or https:// URL with a host")
        return None
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        # Each call carries the bot token: in clear text only to a stand-in on this machine
        # (the rule the OpenID Connect issuer follows, sign_in_fields.issuer_problem).
        checker.report(node, path, "must be an https:// URL (http:// only on this machine: "
                                   "the bot token goes with every call)")
        return None
    return url if url.endswith("/") else url + "/"
