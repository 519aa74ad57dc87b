"""Who calls the admin API or the console, what each route asks of them, and the one rule
beyond roles: nobody approves their own grant.

Kept out of the HTTP layer so the router, whose routes each declare their action
(http_routes.py), only asks two more questions: who is the caller (`bearer_identity` or the
session's), and may they decide this grant (`check_separation`).
"""

from __future__ import annotations

from broker_proxy.identity.roles import Principal, Role
from broker_proxy.policy.chat_rules import ChatRules
from broker_proxy.policy.sign_in_fields import SignInPolicy

# The admin token once a provider signs people in: whoever holds it acts outside the roles, and
# every record says so.
BREAK_GLASS = "token:break-glass"


def oidc_configured(sign_in: SignInPolicy | None) -> bool:
    return sign_in is not None and sign_in.oidc is not None


def bearer_identity(label: str, sign_in: SignInPolicy | None) -> str:
    """`admin-api:<label>` as before, or `token:break-glass` once people sign in by name."""
    return BREAK_GLASS if oidc_configured(sign_in) else f"admin-api:{label}"


def bearer_principal(label: str, sign_in: SignInPolicy | None) -> Principal:
    return Principal(bearer_identity(label, sign_in), Role.ADMIN)


# Deciders held to separation of duties: people who signed in through the provider or clicked
# in a chat tool. The admin token (break-glass, `admin-api:<label>`) is outside the roles, and a
# console session opened with it or a one-time link names whoever it says.
_PEOPLE_DOORS = ("oidc:", "slack:", "webhook:")


class SeparationRefused(Exception):
    """The decider issued the grant themselves: someone else must decide it."""


def person_key(identity: str, chat: ChatRules | None = None) -> str:
    """The person an identity names, so one person is recognised through any door.

    `oidc:<email or sub>` and `cli:<name>` name the email (lower case), subject or name after
    the prefix; a bare name (the CLI's `--by`, the OS user) is itself. A chat user is the
    `person` the policy gives them (`chat.slack.users` / `chat.webhooks.*.users`), else a
    webhook's user is the name the bridge sends, and a Slack user is only itself. Anything else
    (`admin-api:ci`, `console:carol`, `token:break-glass`) is only itself.
    """
    kind, colon, rest = identity.partition(":")
    if not colon:
        return _plain(identity)
    if kind in ("oidc", "cli"):
        return _plain(rest)
    if kind == "slack" and chat is not None and chat.slack is not None \
            and rest in chat.slack.people:
        return person_key(chat.slack.people[rest])
    if kind == "webhook" and ":" in rest:
        name, _, user = rest.partition(":")
        hook = chat.webhooks.get(name) if chat is not None else None
        return person_key(hook.people[user]) if hook is not None and user in hook.people \
            else _plain(user)
    return identity


def _plain(name: str) -> str:
    # Email addresses compare without case (providers differ in what they send); subjects
    # and names exactly.
    return name.lower() if "@" in name else name


def check_separation(principal: Principal, issued_by: str | None, grant_id: str,
                     sign_in: SignInPolicy | None, chat: ChatRules | None = None) -> None:
    """Refuse an approval by the person who issued the grant, through whichever door each
    came (`person_key`).

    Applies to people (signed in through the provider, or a chat user); the break-glass token
    is outside the roles by design. On unless `sign_in.separation_of_duties` is false.
    """
    if sign_in is not None and not sign_in.separation_of_duties:
        return
    if not principal.identity.startswith(_PEOPLE_DOORS) or issued_by is None:
        return
    if issued_by == principal.identity or \
            person_key(issued_by, chat) == person_key(principal.identity, chat):
        raise SeparationRefused(
            f"separation of duties: {principal.identity} issued grant {grant_id} and may not "
            "approve it; another approver must")
