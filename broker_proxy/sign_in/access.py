"""Who calls the admin API or the console, what each route asks of them, and the one rule
beyond roles: nobody approves their own grant.

Kept out of the HTTP layer so the router, whose routes each declare their action
(http_routes.py), only asks two more questions: who is the caller (`bearer_identity` or the
session's), and may they decide this grant (`check_separation`).
"""

from __future__ import annotations

from broker_proxy.identity.roles import Principal, Role
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


class SeparationRefused(Exception):
    """The decider issued the grant themselves: someone else must decide it."""


def check_separation(principal: Principal, issued_by: str | None, grant_id: str,
                     sign_in: SignInPolicy | None) -> None:
    """Refuse an approval by the identity that issued the grant (match on identity).

    Applies to people signed in through the provider; the break-glass token is outside the
    roles by design, and without `separation_of_duties` nothing is checked.
    """
    if sign_in is None or not sign_in.separation_of_duties \
            or not principal.identity.startswith("oidc:"):
        return
    if issued_by is not None and issued_by == principal.identity:
        raise SeparationRefused(
            f"separation of duties: {principal.identity} issued grant {grant_id} and may not "
            "approve it; another approver must")
