"""Headers the proxy sets itself: ``inject: [{header: Authorization, value: "Bearer {secret}"}]``.

For a request to one of the secret's destinations, made with a grant that holds the secret, the
proxy writes the header even though the agent sent no placeholder: the agent holds nothing.

A header the agent already sent under that name is replaced only when the template says
``overwrite: true``. Otherwise the request is refused (``header_already_set``) rather than
forwarded with the agent's own value: the destination expects our credential, and quietly
passing the agent's instead would let it act under an identity the policy never named (or
steer what the secret's owner writes into an account the agent controls).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.basic_credentials import encode_basic
from broker_proxy.grants.model import Grant
from broker_proxy.policy.inject_fields import BASIC_SLOT, SECRET_SLOT
from broker_proxy.policy.model import HeaderTemplate
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.request.paths import AmbiguousPath, canonical_path


class TemplateUse(NamedTuple):
    secret: str
    template: HeaderTemplate


def applicable_templates(policy: ActivePolicy, grant: Grant,
                         request: OutboundRequest) -> list[TemplateUse]:
    """Templates of the grant's secrets whose destinations allow this exact request.

    Matched on the canonical path, as placeholders are; a path that has none gets no
    templated header (the request then goes on as one without a secret).
    """
    templated = [(name, secret) for name in grant.secrets
                 if (secret := policy.policy.secrets.get(name)) is not None and secret.templates]
    if not templated:  # the common case: no work per request, not even the path
        return []
    try:
        path = canonical_path(request.path)
    except AmbiguousPath:
        return []
    uses: list[TemplateUse] = []
    for name, secret in templated:
        if policy.index.allows(name, request.scheme, request.host, request.port,
                               request.method, path):
            uses.extend(TemplateUse(name, template) for template in secret.templates)
    return uses


def template_conflict(uses: list[TemplateUse],
                      headers: tuple[tuple[str, str], ...]) -> str | None:
    """Why these templates cannot be applied to these headers, or None."""
    sent = {name.lower() for name, _ in headers}
    owner: dict[str, str] = {}
    for use in uses:
        lowered = use.template.header.lower()
        if lowered in owner:
            return (f'secrets "{owner[lowered]}" and "{use.secret}" would both set '
                    f"{use.template.header}")
        owner[lowered] = use.secret
        if lowered in sent and not use.template.overwrite:
            return (f"the proxy sets {use.template.header} for this destination; do not send "
                    "it (or let the policy say overwrite: true)")
    return None


def apply_templates(headers: tuple[tuple[str, str], ...], uses: list[TemplateUse],
                    values: Mapping[str, str],
                    usernames: Mapping[str, str | None]) -> tuple[tuple[str, str], ...]:
    """The headers with every templated one removed and written again with the value."""
    replaced = {use.template.header.lower() for use in uses}
    kept = [(name, value) for name, value in headers if name.lower() not in replaced]
    return (*kept, *((use.template.header, render(use.template, values[use.secret],
                                                  usernames.get(use.secret))) for use in uses))


def render(template: HeaderTemplate, value: str, username: str | None) -> str:
    # partition, not str.replace: the loader allows one slot, and a value that itself holds
    # "{secret}" must never be expanded a second time.
    if BASIC_SLOT in template.value and username is not None:
        before, _, after = template.value.partition(BASIC_SLOT)
        return before + encode_basic(username, value).removeprefix("Basic ") + after
    before, _, after = template.value.partition(SECRET_SLOT)
    return before + value + after
