"""Hosted tools allowed on terms: the policy's domain allow-list and use cap, written into the tool.

A secret's ``hosted_tools: {web_search: {allowed_domains: [...], max_uses: 5}}`` lets a request
ask the vendor to search or fetch, but only where and as often as the policy says, and the
vendor enforces it because the proxy writes the terms into the tool definition it reads:

* Anthropic Messages, ``web_search_YYYYMMDD`` and ``web_fetch_YYYYMMDD``: ``allowed_domains``
  and ``max_uses``.
* OpenAI Responses, ``web_search`` and ``web_search_2025_08_26``: ``filters.allowed_domains``.
  The tool has no use cap, so a rule with ``max_uses`` refuses it.
* Tools that cannot carry the terms (OpenAI's ``web_search_preview``, Chat Completions'
  ``web_search_options``, Gemini's ``googleSearch``/``urlContext``) are refused under a rule.

A request that names its own domains keeps them if each is one of the policy's or a subdomain of
one, and is refused otherwise (403 hosted_tool_not_allowed): silently dropping a domain the
agent asked for would change its results without telling it, and a refusal says what to fix.
A request's own ``max_uses`` above the cap is lowered to it (fewer uses cannot widen anything).
Anthropic's ``blocked_domains`` cannot be combined with ``allowed_domains``, so a request that
names them under a domain rule is refused too. Rewriting is deterministic, so the same request
always becomes the same body (approval digests stay stable).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from broker_proxy.decision.hosted_tools import tool_kind
from broker_proxy.policy.model import HostedToolRule

_ANTHROPIC = re.compile(r"^web_(search|fetch)_[0-9]{8}$")
_OPENAI = frozenset({"web_search", "web_search_2025_08_26"})


class ToolTermsRefused(ValueError):
    """The request asks for a hosted tool in a way the policy's terms do not allow."""


def apply_tool_rules(body: bytes, rules: Mapping[str, HostedToolRule], secret: str
                     ) -> bytes | None:
    """The body with the rules written into its hosted tools; None when nothing changes.

    Raises ToolTermsRefused (its message names the secret and the tool) to refuse the request.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: hosted_tools.py found no tools in it either
    if not isinstance(document, dict):
        return None
    changed = False
    if document.get("web_search_options") is not None and "web_search" in rules:
        raise ToolTermsRefused(f'secret "{secret}" allows web_search only with terms the '
                               "proxy writes into the tool; Chat Completions' "
                               "web_search_options cannot carry them (use the Responses API)")
    tools = document.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if not isinstance(tool, dict):
            continue
        kinds = tool_kind(tool)
        rule = next((rules[k] for k in kinds if k in rules), None)
        if rule is None:
            continue
        changed |= _apply(tool, rule, secret)
    if not changed:
        return None
    return json.dumps(document, ensure_ascii=False).encode()


def _apply(tool: dict[str, Any], rule: HostedToolRule, secret: str) -> bool:
    kind = tool.get("type")
    shown = json.dumps(kind if isinstance(kind, str) else sorted(tool)[:3])
    if isinstance(kind, str) and _ANTHROPIC.fullmatch(kind):
        changed = False
        if rule.allowed_domains is not None:
            if tool.get("blocked_domains") is not None:
                raise ToolTermsRefused(f'secret "{secret}" allows tool {shown} only for some '
                                       "domains: name allowed_domains, not blocked_domains")
            changed |= _set_domains(tool, "allowed_domains", tool.get("allowed_domains"),
                                    rule.allowed_domains, secret, shown)
        if rule.max_uses is not None:
            changed |= _cap_uses(tool, rule.max_uses, secret, shown)
        return changed
    if isinstance(kind, str) and kind in _OPENAI and rule.max_uses is None:
        assert rule.allowed_domains is not None  # a rule writes something
        filters = tool.get("filters")
        if filters is not None and not isinstance(filters, dict):
            raise ToolTermsRefused(f'tool {shown}: "filters" is not an object')
        filters = dict(filters or {})
        if not _set_domains(filters, "allowed_domains", filters.get("allowed_domains"),
                            rule.allowed_domains, secret, shown):
            return False
        tool["filters"] = filters
        return True
    raise ToolTermsRefused(f'secret "{secret}" allows tool {shown} only with '
                           + ("a domain allow-list and use cap" if rule.allowed_domains
                              and rule.max_uses else "a use cap" if rule.max_uses
                              else "a domain allow-list")
                           + " the proxy writes into it, and this tool cannot carry that")


def _set_domains(into: dict[str, Any], key: str, asked: Any, allowed: tuple[str, ...],
                 secret: str, shown: str) -> bool:
    if asked is None:
        into[key] = list(allowed)
        return True
    if not isinstance(asked, list) or not all(isinstance(d, str) for d in asked) or not asked:
        raise ToolTermsRefused(f"tool {shown}: {key} is not a list of domains")
    outside = [d for d in asked if not _within(d, allowed)]
    if outside:
        raise ToolTermsRefused(f'secret "{secret}" allows tool {shown} only for the domains '
                               f"{', '.join(allowed)} (and their subdomains); the request "
                               f"names {json.dumps(outside[0][:100])}")
    return False


def _within(domain: str, allowed: tuple[str, ...]) -> bool:
    """Whether a requested domain (Anthropic allows a path after it) is an allowed one's."""
    host = domain.split("/", 1)[0].lower().rstrip(".")
    if not host or ":" in host or "*" in host:
        return False
    return any(host == a or host.endswith("." + a) for a in allowed)


def _cap_uses(tool: dict[str, Any], cap: int, secret: str, shown: str) -> bool:
    asked = tool.get("max_uses")
    if asked is None:
        tool["max_uses"] = cap
        return True
    if not isinstance(asked, int) or isinstance(asked, bool) or asked < 1:
        raise ToolTermsRefused(f"tool {shown}: max_uses is not a positive integer")
    if asked > cap:
        tool["max_uses"] = cap
        return True
    return False
