"""From an ID token's claims to a person the audit can name and the role they act under.

Who may sign in is decided here, after the token itself was validated (oidc.py): an email in an
allowed domain (and not marked unverified by the provider), or a subject listed by name. The
role comes from the configured claim (`groups` by default); a person whose values map to no
role is refused at sign-in rather than let in to see nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from broker_proxy.identity.roles import Principal, Role
from broker_proxy.policy.sign_in_fields import OidcSettings, SignInPolicy
from broker_proxy.sign_in.oidc import OidcRefused

MAX_IDENTITY = 200


def person_of(claims: Mapping[str, Any], settings: OidcSettings) -> str:
    """`oidc:<email>` for a person let in by their domain, `oidc:<sub>` for a listed subject."""
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject or len(subject) > MAX_IDENTITY:
        raise OidcRefused("oidc_not_allowed", "the ID token names no subject")
    email = claims.get("email")
    if isinstance(email, str) and "@" in email and claims.get("email_verified") is not False \
            and email.rsplit("@", 1)[1].lower() in settings.allowed_domains \
            and _printable(email):
        return f"oidc:{email.lower()}"
    if subject in settings.allowed_subjects and _printable(subject):
        return f"oidc:{subject}"
    raise OidcRefused("oidc_not_allowed", "this account may not sign in here (its email domain "
                                          "or subject is not allowed by the policy)")


def role_of(claims: Mapping[str, Any], sign_in: SignInPolicy, claim: str) -> Role:
    """The highest role any value of the claim maps to."""
    raw = claims.get(claim)
    values = {raw} if isinstance(raw, str) else \
        {v for v in raw if isinstance(v, str)} if isinstance(raw, list) else set()
    roles = [role for value, role in sign_in.roles if value in values]
    if not roles:
        raise OidcRefused("oidc_no_role", f"the provider knows you, but no value of the "
                                          f"{claim!r} claim maps to a role here; ask an "
                                          "admin for one")
    return max(roles)


def principal_of(claims: Mapping[str, Any], sign_in: SignInPolicy) -> Principal:
    if sign_in.oidc is None:
        raise OidcRefused("oidc_not_configured", "OpenID Connect sign-in is not configured")
    return Principal(person_of(claims, sign_in.oidc),
                     role_of(claims, sign_in, sign_in.oidc.role_claim))


def _printable(text: str) -> bool:
    # The identity goes into audit records, headers of the console and log lines.
    return len(text) <= MAX_IDENTITY and all(0x20 < ord(c) < 0x7F for c in text)
