"""Roles and the principal that carries one: what a signed-in person may do.

Three roles, each including the one below it, because that is how the people who run agents
split the work: a viewer reads, an approver also decides held requests and pending grants, an
admin also issues, revokes and reloads. A refused action names the role that would allow it, so
the person knows whom to ask instead of guessing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Role(enum.IntEnum):
    """Ordered: a higher role may do everything a lower one may."""

    VIEWER = 1
    APPROVER = 2
    ADMIN = 3

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            names = ", ".join(role.name.lower() for role in cls)
            raise ValueError(f"unknown role {text!r}: expected one of {names}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


class Action(enum.Enum):
    """What a request to the admin API, the console or a chat endpoint asks to do."""

    READ = "read"  # list grants, holds, the audit, metrics views
    DECIDE = "decide"  # allow or deny a held request or a pending grant
    ADMINISTER = "administer"  # issue, revoke, reload, set secrets

    @property
    def required_role(self) -> Role:
        return _REQUIRED[self]


_REQUIRED = {Action.READ: Role.VIEWER, Action.DECIDE: Role.APPROVER, Action.ADMINISTER: Role.ADMIN}


class RoleRefused(Exception):
    """The principal's role does not allow the action; answered 403 `role_required`."""

    def __init__(self, principal: Principal, action: Action) -> None:
        self.principal = principal
        self.action = action
        super().__init__(
            f"{principal.identity} has role {principal.role.label}; "
            f"{action.value} needs role {action.required_role.label}")


@dataclass(frozen=True, slots=True)
class Principal:
    """A person or system, named as the audit names it, with the role it acts under.

    `identity` carries its origin as a prefix (`oidc:alice@example.com`, `slack:U024BE7LH`,
    `cli:bob`, `console:alice`, `admin-api:ci`, `token:break-glass`), so a record says not only who
    but through which door.
    """

    identity: str
    role: Role

    def allows(self, action: Action) -> bool:
        return self.role >= action.required_role

    def require(self, action: Action) -> None:
        if not self.allows(action):
            raise RoleRefused(self, action)
