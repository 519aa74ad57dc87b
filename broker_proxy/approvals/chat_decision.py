"""What Slack and the signed webhooks share: who the chat user is, and deciding exactly once.

A chat user is only who the policy says it is: an id missing from the mapping is refused (an
unknown Slack workspace member is not an approver because they can click a button), and the
role the mapping gives is checked against DECIDE like any other caller's. The decision itself
is the desk's, under its lock, so a second click or a replayed payload finds the request
already decided and changes nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from broker_proxy.approvals.desk import ApprovalDesk, HeldRequest, HoldNotFound, HoldStateError
from broker_proxy.http_routes import ApiError, require_action
from broker_proxy.identity.roles import Action, Principal, Role
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets.source import SecretSource

HOLD_ID = re.compile(r"h_[0-9a-f]{16}")
# A vault entry's value by its name; raises SecretUnavailable (503) when it cannot be read.
ReadSecret = Callable[[str], str]
# Separation of duties (console/separation.py): raises a 403 ApiError when the principal is the
# person who issued the grant (by id); kept a callable so this layer need not know sign-in.
RefuseOwnGrant = Callable[[Principal, str], None]


class ChatUserRefused(ApiError):
    """A signed chat request from a user the policy does not let decide: answered 403, and
    audited (chat_door.py) as a `decision_refused` naming the user and the held request."""

    def __init__(self, refused: ApiError, identity: str, hold_id: str,
                 grant: str | None = None) -> None:
        super().__init__(refused.status, refused.code, refused.message)
        self.identity = identity
        self.hold_id = hold_id if HOLD_ID.fullmatch(hold_id) else None
        self.grant = grant  # the held request's grant, when the refusal is about it


def chat_principal(identity: str, role: str | None, hold_id: str) -> Principal:
    """The principal of a mapped chat user; 403 `chat_user_unknown` for an unmapped one, and
    403 `role_required` for one whose role may not decide (both ChatUserRefused)."""
    try:
        if role is None:
            raise ApiError(403, "chat_user_unknown",
                           f"{identity} is not given a role in the policy's chat section")
        principal = Principal(identity, Role.parse(role))
        require_action(principal, Action.DECIDE)
    except ApiError as refused:
        raise ChatUserRefused(refused, identity, hold_id) from None
    return principal


def decide_once(desk: ApprovalDesk, hold_id: str, allow: bool, principal: Principal, *,
                uses: int | None = None, minutes: int | None = None,
                refuse_own: RefuseOwnGrant | None = None) -> HeldRequest:
    """Allow or deny the held request as `principal`; 404, 409 or 400 when nothing changed,
    403 `separation_of_duties` (a ChatUserRefused) for allowing a request on a grant the same
    person issued. Denying stays open to them, as in the console: it gives nothing away."""
    if not HOLD_ID.fullmatch(hold_id):
        raise ApiError(404, "request_not_found", "no such held request")
    if allow and refuse_own is not None and (held := desk.get(hold_id)) is not None:
        try:
            refuse_own(principal, held.grant)
        except ApiError as refused:
            raise ChatUserRefused(refused, principal.identity, hold_id, held.grant) from None
    try:
        return desk.decide(hold_id, allow, by=principal.identity, uses=uses, minutes=minutes)
    except HoldNotFound:
        raise ApiError(404, "request_not_found", "no such held request") from None
    except HoldStateError as error:
        raise ApiError(409, "request_already_decided", f"{error}; nothing changed") from None
    except ValueError as error:
        raise ApiError(400, "invalid_request", str(error)) from None


def outcome(item: HeldRequest) -> str:
    """One line: what was decided, by whom (as the audit names them)."""
    if item.state == "denied":
        verdict = "Denied"
    elif item.choice == "uses":
        verdict = f"Allowed for {item.uses} uses"
    elif item.choice == "minutes":
        verdict = f"Allowed for {item.minutes} minutes"
    else:
        verdict = "Allowed once"
    return f"{verdict} by {item.decided_by}"


def decided_answer(item: HeldRequest) -> dict[str, object]:
    return {"status": item.state, "request": item.id, "by": item.decided_by,
            "message": outcome(item)}


def vault_entry(secrets: SecretSource) -> ReadSecret:
    """Reads a vault entry by name (a bot token, a signing secret) each time it is used, so a
    `secret set` applies at once; SecretUnavailable when the vault cannot give it."""
    def read(name: str) -> str:
        entry = SecretPolicy(name, "vault", None, "", (), frozenset(), None)
        return secrets.stored_value(entry).reveal()
    return read
