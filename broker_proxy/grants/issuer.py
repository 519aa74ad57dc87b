"""Issuing a grant: the policy bounds what may be asked for, the store records what was given.

Every refusal is a `GrantPolicyError` with one line that says what to change. A refused
secret gets the same message whether or not the policy defines it, so asking is no way to
learn which secrets exist.
"""

from __future__ import annotations

import json
import secrets as secrets_module
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from urllib.parse import quote, urlsplit

from broker_proxy.grants.model import Grant, GrantStatus, new_grant_id
from broker_proxy.grants.store import GrantError, GrantStore
from broker_proxy.grants.tokens import new_token, token_hash
from broker_proxy.policy.limit_fields import RateSpellingError, parse_rate_text
from broker_proxy.policy.model import AgentPolicy, Policy, RateLimit

DEFAULT_TTL = timedelta(minutes=15)
MAX_TASK_LENGTH = 500

# Control (Cc), format (Cf: bidi overrides, zero-width) and line/paragraph separators: the task
# is shown to the human who approves the grant, and these could hide or reorder what it says.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})


class GrantPolicyError(GrantError, ValueError):
    """The grant asked for is not one the policy allows."""


@dataclass(frozen=True, slots=True)
class IssuedGrant:
    """What the issuer hands back once; the token exists nowhere else after this."""

    grant: Grant
    token: str = field(repr=False)
    placeholders: dict[str, str]
    # Carries the token in its password, so it is kept out of repr as well.
    proxy_url: str | None = field(default=None, repr=False)


def issue_grant(
    policy: Policy,
    store: GrantStore,
    *,
    agent: str,
    task: str,
    secrets: list[str] | tuple[str, ...] | frozenset[str],
    ttl: timedelta | None,
    max_uses: int | None,
    now: datetime,
    proxy_url_base: str | None = None,
    rates: Sequence[str] = (),
    concurrency: Sequence[str] = (),
    cost_usd: Sequence[str] = (),
    input_tokens: Sequence[str] = (),
    output_tokens: Sequence[str] = (),
    issued_by: str | None = None,
) -> IssuedGrant:
    """Check the request against the policy, store the grant, return it with its token.

    `proxy_url_base` is the running proxy's address ("host:port" or "http://host:port");
    when given, the result carries the full proxy URL an agent puts in HTTPS_PROXY.
    `rates` ("[SECRET=]N/PER"), `concurrency` ("[SECRET=]N"), `cost_usd` ("[SECRET=]USD"),
    `input_tokens` and `output_tokens` ("[SECRET=]N") ask for stricter limits than the
    policy's, never looser ones. `issued_by` (who issues it, as the audit names them) is
    stored with the grant, for separation of duties.
    """
    if now.utcoffset() is None:
        raise ValueError("issue_grant needs a timezone-aware now")
    agent_policy, names, lifetime = _checked_request(policy, agent, task, secrets, ttl, max_uses)
    own_rates = grant_rates(policy, names, rates)
    own_caps = grant_caps(policy, names, concurrency, cost_usd, input_tokens, output_tokens)

    needs_approval = any(name in agent_policy.approval for name in names)
    issued_at = now.astimezone(UTC)
    grant_id = new_grant_id()
    token = new_token(grant_id)
    grant = Grant(
        id=grant_id, agent=agent, task=task, secrets=tuple(names), created_at=issued_at,
        expires_at=issued_at + lifetime, max_uses=max_uses, uses=0,
        status=GrantStatus.PENDING if needs_approval else GrantStatus.ACTIVE,
        approved_by=None, approved_at=None, revoked_at=None, token_hash=token_hash(token),
        placeholders=own_placeholders(policy, names), issued_by=issued_by,
    )
    _store_with_limits(store, grant, own_rates, own_caps, now)
    return IssuedGrant(
        grant=grant,
        token=token,
        placeholders={name: grant.placeholder_of(name) or policy.secrets[name].placeholder
                      for name in names},
        proxy_url=None if proxy_url_base is None else _url_from_base(proxy_url_base, agent, token),
    )


def _checked_request(
    policy: Policy, agent: str, task: str,
    secrets: list[str] | tuple[str, ...] | frozenset[str],
    ttl: timedelta | None, max_uses: int | None,
) -> tuple[AgentPolicy, list[str], timedelta]:
    """The agent's policy, the secrets (sorted, once each) and the lifetime of a grant the
    policy allows; a `GrantPolicyError` naming the first thing it does not allow."""
    agent_policy = policy.agents.get(agent)
    if agent_policy is None:
        raise GrantPolicyError(f"agent {_quoted(agent)} is not in the policy")
    _check_task(task)
    names = sorted(set(secrets))
    if not names:
        raise GrantPolicyError("a grant needs at least one secret")
    for name in names:
        # One message for "not allowed" and "does not exist" (see the module docstring).
        if name not in agent_policy.secrets or name not in policy.secrets:
            raise GrantPolicyError(
                f"agent {_quoted(agent)} may not be granted secret {_quoted(name)}"
            )
    lifetime = min(DEFAULT_TTL, agent_policy.max_ttl) if ttl is None else ttl
    if lifetime <= timedelta(0):
        raise GrantPolicyError(f"ttl must be positive, got {format_duration(lifetime)}")
    if lifetime > agent_policy.max_ttl:
        raise GrantPolicyError(
            f"ttl {format_duration(lifetime)} exceeds max_ttl"
            f" {format_duration(agent_policy.max_ttl)} for agent {_quoted(agent)}"
        )
    if max_uses is not None and (isinstance(max_uses, bool) or max_uses < 1):
        raise GrantPolicyError(f"max_uses must be at least 1, got {max_uses}")
    return agent_policy, names, lifetime


def _store_with_limits(store: GrantStore, grant: Grant, own_rates: dict[str, RateLimit],
                       own_caps: dict[str, tuple[int | None, ...]], now: datetime) -> None:
    """Create the grant, then record its own (stricter) limits; revoked if they cannot be."""
    store.create(grant)
    try:
        for name, rate in own_rates.items():
            store.limit_rate(grant, name, rate)
        for name, caps in own_caps.items():
            store.limit_budget(grant, name, caps)
    except BaseException:
        # Never leave a grant running looser than it was asked for.
        store.revoke(grant.id, now)
        raise


def grant_rates(policy: Policy, names: list[str],
                rates: Sequence[str]) -> dict[str, RateLimit]:
    """The rates a grant asks for ("[SECRET=]N/PER"), each checked to be no looser than the
    policy's; without "SECRET=" a rate applies to every granted secret the policy rates."""
    chosen: dict[str, RateLimit] = {}
    for text in rates:
        secret, _, spelled = text.rpartition("=")
        targets = [secret] if secret else [n for n in names if policy.secrets[n].rate]
        if secret and secret not in names:
            raise GrantPolicyError(f"rate {_quoted(text)} names a secret the grant does not hold")
        if not targets:
            raise GrantPolicyError("no granted secret has a rate in the policy to tighten")
        for name in targets:
            ceiling = policy.secrets[name].rate
            if ceiling is None:
                raise GrantPolicyError(f"secret {_quoted(name)} has no rate in the policy; a "
                                       "grant may only tighten one")
            try:
                asked = parse_rate_text(spelled)
            except RateSpellingError as error:
                raise GrantPolicyError(str(error)) from None
            asked = replace(asked, burst=min(asked.burst, ceiling.burst))
            if not asked.at_most(ceiling):
                raise GrantPolicyError(f"rate {spelled} for secret {_quoted(name)} is more than "
                                       f"the policy allows ({ceiling})")
            chosen[name] = asked
    return chosen


def grant_caps(policy: Policy, names: list[str], concurrency: Sequence[str],
               cost_usd: Sequence[str], input_tokens: Sequence[str] = (),
               output_tokens: Sequence[str] = ()) -> dict[str, tuple[int | None, ...]]:
    """secret -> its own (input, output, micro-dollars, requests) caps, each at most the
    policy's; "[SECRET=]VALUE" without a secret applies to every granted secret that has one."""
    chosen: dict[str, list[int | None]] = {}
    for what, texts, index in (("input_tokens", input_tokens, 0),
                               ("output_tokens", output_tokens, 1),
                               ("cost_usd", cost_usd, 2), ("concurrency", concurrency, 3)):
        for text in texts:
            secret, _, spelled = text.rpartition("=")
            if secret and secret not in names:
                raise GrantPolicyError(f"{what} {_quoted(text)} names a secret the grant does "
                                       "not hold")
            value = _cap_value(what, spelled)
            targets = [secret] if secret else [n for n in names
                                               if _policy_cap(policy, n, index) is not None]
            if not targets:
                raise GrantPolicyError(f"no granted secret has a {what} in the policy to "
                                       "tighten")
            for name in targets:
                ceiling = _policy_cap(policy, name, index)
                if ceiling is None:
                    raise GrantPolicyError(f"secret {_quoted(name)} has no {what} in the "
                                           "policy; a grant may only tighten one")
                if value > ceiling:
                    shown = f"{ceiling / 1_000_000:g}" if index == 2 else str(ceiling)
                    raise GrantPolicyError(f"{what} {spelled} for secret {_quoted(name)} is "
                                           f"more than the policy allows ({shown})")
                chosen.setdefault(name, [None, None, None, None])[index] = value
    return {name: tuple(caps) for name, caps in chosen.items()}


def _cap_value(what: str, spelled: str) -> int:
    """A concurrency or token cap as an integer >= 1, a cost in USD as micro-dollars."""
    try:
        if what != "cost_usd":
            value = int(spelled)
            if value >= 1:
                return value
        else:
            usd = float(spelled)
            if 0 <= usd <= 1_000_000:
                return round(usd * 1_000_000)
    except ValueError:
        pass
    raise GrantPolicyError(f"invalid {what} {_quoted(spelled[:40])}: write "
                           + ("US dollars, e.g. 2.50" if what == "cost_usd" else
                              "a whole number >= 1"))


def _policy_cap(policy: Policy, name: str, index: int) -> int | None:
    secret = policy.secrets[name]
    if index == 3:
        return secret.concurrency
    if secret.budget is None:
        return None
    return (secret.budget.input_tokens, secret.budget.output_tokens,
            secret.budget.micro_usd)[index]


def own_placeholders(policy: Policy, names: list[str]) -> tuple[tuple[str, str], ...]:
    """A fresh placeholder for each secret with a placeholder_format, drawn with `secrets`."""
    drawn = []
    for name in names:
        shape = policy.secrets[name].placeholder_format
        if shape is not None:
            tail = "".join(secrets_module.choice(shape.alphabet) for _ in range(shape.length))
            drawn.append((name, shape.prefix + tail))
    return tuple(drawn)


def proxy_url(agent: str, token: str, listen_host: str, listen_port: int) -> str:
    """The HTTPS_PROXY value for an agent: the user part is informational, the password is
    the grant token (see DESIGN.md, "How an agent connects")."""
    host = f"[{listen_host}]" if ":" in listen_host and not listen_host.startswith("[") else (
        listen_host
    )
    return f"http://{quote(agent, safe='')}:{quote(token, safe='')}@{host}:{listen_port}"


def format_duration(span: timedelta) -> str:
    """Compact h/m/s form ("1h30m", "15m", "500ms"), the way policies write durations."""
    if span < timedelta(0):
        return "-" + format_duration(-span)
    micros = span // timedelta(microseconds=1)
    if micros == 0:
        return "0s"
    seconds, rest = divmod(micros, 1_000_000)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    parts = [f"{v}{unit}" for v, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if v]
    if rest:
        parts.append(f"{rest // 1000}ms" if rest % 1000 == 0 else f"{rest}us")
    return "".join(parts)


def _check_task(task: str) -> None:
    if not task.strip():
        raise GrantPolicyError("task must not be empty")
    if len(task) > MAX_TASK_LENGTH:
        raise GrantPolicyError(
            f"task is {len(task)} characters; at most {MAX_TASK_LENGTH} are allowed"
        )
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in task):
        raise GrantPolicyError("task must not contain control characters")


def _quoted(name: str) -> str:
    # JSON string syntax: a name with a newline or escape sequence stays on one printable line.
    return json.dumps(name)


def _url_from_base(base: str, agent: str, token: str) -> str:
    parts = urlsplit(base if "://" in base else f"http://{base}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "http" or not parts.hostname or port is None or parts.username:
        # The address is not echoed: a mistaken paste could carry credentials.
        raise ValueError("proxy address must be host:port or http://host:port")
    return proxy_url(agent, token, parts.hostname, port)
