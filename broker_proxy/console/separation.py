"""Separation of duties as the admin listener applies it, to the console, the admin API and the
chat door alike: who issued a grant, and the 403 for the person who did.

Who issued a grant is stored with it (`Grant.issued_by`), so the answer does not depend on the
audit log this process can read: a grant issued before the last rotation, or by another replica
writing its own log, is held back the same. A grant stored by an older broker-proxy has no
issuer; for those the `grant_issued` record of this home's audit log is searched, as before.
"""

from __future__ import annotations

from broker_proxy.console.audit_index import AuditIndex
from broker_proxy.grants.store import GrantStore
from broker_proxy.http_routes import ApiError
from broker_proxy.identity.roles import Principal
from broker_proxy.policy.chat_rules import ChatRules
from broker_proxy.policy.sign_in_fields import SignInPolicy
from broker_proxy.sign_in import access


def grant_issuer(grants: GrantStore, audit: AuditIndex | None, grant_id: str) -> str | None:
    """The identity that issued `grant_id`, as its audit record names it; None when unknown."""
    grant = grants.get(grant_id)
    if grant is not None and grant.issued_by is not None:
        return grant.issued_by
    if audit is None:
        return None
    # Stored before grants kept their issuer: the audit log is the only witness left.
    issued = audit.page({"grant": grant_id, "event": "grant_issued"}, None, 1).records
    by = issued[0].get("by") if issued else None
    return by if isinstance(by, str) else None


def refuse_own_grant(principal: Principal, grant_id: str, *, grants: GrantStore,
                     audit: AuditIndex | None, sign_in: SignInPolicy | None,
                     chat: ChatRules | None) -> None:
    """403 `separation_of_duties` (an ApiError, not yet audited: each door records its own
    refusal) when `principal` is the person who issued the grant (access.person_key)."""
    try:
        access.check_separation(principal, grant_issuer(grants, audit, grant_id), grant_id,
                                sign_in, chat)
    except access.SeparationRefused as refused:
        raise ApiError(403, "separation_of_duties", str(refused)) from None
