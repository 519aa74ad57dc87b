"""The policy's ``sign_in`` section: who may sign in to the console and the admin API, and with
which role.

```yaml
sign_in:
  oidc:
    issuer: https://idp.example.com/realms/acme
    client_id: broker-console
    client_secret: oidc_client_secret   # a NAME in the broker's vault, never the value
    allowed_domains: [example.com]      # and/or allowed_subjects: [...]
    role_claim: groups                  # default
    redirect_uri: https://broker.example.com/ui/oidc/callback  # optional, behind a proxy
  roles:                                # claim value -> role; the highest one found wins
    broker-admins: admin
    refund-approvers: approver
    staff: viewer
  separation_of_duties: true            # an approver may not decide their own grant
```

The client secret is named, not written: a policy file is read by many people and kept in git,
the vault is not. Kept apart from the loader so the loader makes one call; the rules and their
messages live here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import yaml

from broker_proxy.identity.roles import Role
from broker_proxy.policy.checking import NodeChecker

SECRET_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.-]{0,63}")
CLAIM_NAME = re.compile(r"[!-~]{1,128}")
DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}|localhost")
DEFAULT_ROLE_CLAIM = "groups"
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
CALLBACK_PATH = "/ui/oidc/callback"


@dataclass(frozen=True, slots=True)
class OidcSettings:
    issuer: str  # exactly as the provider's discovery document and its tokens say it
    client_id: str
    client_secret: str  # the vault entry's name
    allowed_domains: frozenset[str]  # email domains (lower case); empty: none by domain
    allowed_subjects: frozenset[str]  # `sub` values; empty: none by subject
    role_claim: str = DEFAULT_ROLE_CLAIM
    # Where the provider sends the browser back, when the console is reached through a
    # reverse proxy; None: http://<admin address>/ui/oidc/callback.
    redirect_uri: str | None = None


@dataclass(frozen=True, slots=True)
class SignInPolicy:
    oidc: OidcSettings | None
    # (claim value, role) in the file's order; a person gets the highest role any value gives.
    roles: tuple[tuple[str, Role], ...] = ()
    separation_of_duties: bool = True


def issuer_problem(issuer: str) -> str | None:
    """https only, except on this machine: an ID token fetched over plain HTTP from elsewhere
    could be anyone's."""
    try:
        parts = urlsplit(issuer)
    except ValueError:
        return "must be an https:// URL"
    if parts.query or parts.fragment or not parts.hostname:
        return "must be an https:// URL with a host and no query or fragment"
    if parts.scheme == "https" or (parts.scheme == "http"
                                   and parts.hostname in LOOPBACK_HOSTS):
        return None
    return "must be an https:// URL (http:// only for a provider on this machine)"


def redirect_uri_problem(uri: str) -> str | None:
    """https (http only on this machine), a host, and the console's callback path: the
    provider sends the sign-in's code there, and the binding cookie only goes to /ui/oidc."""
    problem = (f"must be https://<host>{CALLBACK_PATH}, where the browser reaches the "
               "console's callback (http:// only for localhost)")
    try:
        parts = urlsplit(uri)
        _port = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        return problem
    if not parts.hostname or parts.query or parts.fragment or parts.path != CALLBACK_PATH:
        return problem
    if parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in LOOPBACK_HOSTS):
        return None
    return problem


def parse_sign_in(node: yaml.Node, checker: NodeChecker) -> SignInPolicy | None:
    fields = checker.fields(node, "sign_in", "sign_in", node)
    if fields is None:
        return None
    oidc = _oidc(fields["oidc"][1], checker) if "oidc" in fields else None
    roles: list[tuple[str, Role]] = []
    if "roles" in fields:
        for name, _key, value in _entries(checker, fields["roles"][1], "sign_in.roles"):
            text = checker.string(value, f"sign_in.roles.{name}", "viewer, approver or admin")
            if text is None:
                continue
            try:
                roles.append((name, Role.parse(text)))
            except ValueError as error:
                checker.report(value, f"sign_in.roles.{name}", str(error))
    separation = True
    if "separation_of_duties" in fields:
        value = fields["separation_of_duties"][1]
        if value.tag != "tag:yaml.org,2002:bool":
            checker.report(value, "sign_in.separation_of_duties", "expected true or false")
        else:
            separation = value.value.lower() in ("true", "yes", "on")
    if oidc is not None and not roles:
        checker.report(node, "sign_in.roles", "map at least one claim value to a role, or "
                                              "nobody who signs in may do anything")
    return SignInPolicy(oidc, tuple(roles), separation)


def _entries(checker: NodeChecker, node: yaml.Node, path: str
             ) -> list[tuple[str, yaml.Node, yaml.Node]]:
    if not checker.kind(node, path, yaml.MappingNode, "a mapping of claim value to role"):
        return []
    found = []
    for key, value in node.value:
        name = checker.string(key, path, "a claim value")
        if name is not None:
            found.append((name, key, value))
    return found


def _oidc(node: yaml.Node, checker: NodeChecker) -> OidcSettings | None:
    fields = checker.fields(node, "sign_in.oidc", "oidc_sign_in", node)
    if fields is None:
        return None
    before = len(checker.issues)
    values: dict[str, str] = {}
    for name in ("issuer", "client_id", "client_secret", "role_claim", "redirect_uri"):
        if name in fields:
            text = checker.string(fields[name][1], f"sign_in.oidc.{name}")
            if text is not None:
                values[name] = text
    if (issuer := values.get("issuer")) is not None and (problem := issuer_problem(issuer)):
        checker.report(fields["issuer"][1], "sign_in.oidc.issuer", problem)
    if "client_secret" in values and not SECRET_NAME.fullmatch(values["client_secret"]):
        checker.report(fields["client_secret"][1], "sign_in.oidc.client_secret",
                       "the name of a vault entry (`broker-proxy secret set NAME`), "
                       "not the secret itself")
    if (uri := values.get("redirect_uri")) is not None and (
            problem := redirect_uri_problem(uri)):
        checker.report(fields["redirect_uri"][1], "sign_in.oidc.redirect_uri", problem)
    if "role_claim" in values and not CLAIM_NAME.fullmatch(values["role_claim"]):
        checker.report(fields["role_claim"][1], "sign_in.oidc.role_claim",
                       "a claim name: 1-128 printable characters")
    domains = _list(fields, "allowed_domains", checker, lower=True)
    for domain in domains:
        if not DOMAIN.fullmatch(domain):
            checker.report(fields["allowed_domains"][1], "sign_in.oidc.allowed_domains",
                           f'"{domain}" is not a domain name such as example.com')
    subjects = _list(fields, "allowed_subjects", checker, lower=False)
    if not domains and not subjects:
        checker.report(node, "sign_in.oidc", "name allowed_domains or allowed_subjects: "
                                             "who of the provider's users may sign in")
    if len(checker.issues) != before or not {"issuer", "client_id", "client_secret"} <= set(
            values):
        return None
    return OidcSettings(values["issuer"], values["client_id"], values["client_secret"],
                        frozenset(domains), frozenset(subjects),
                        values.get("role_claim", DEFAULT_ROLE_CLAIM),
                        values.get("redirect_uri"))


def _list(fields: dict[str, tuple[yaml.Node, yaml.Node]], name: str, checker: NodeChecker,
          *, lower: bool) -> list[str]:
    if name not in fields:
        return []
    found = checker.strings(fields[name][1], f"sign_in.oidc.{name}") or []
    return [value.lower() if lower else value for _path, _node, value in found]
