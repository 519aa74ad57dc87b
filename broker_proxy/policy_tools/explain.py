"""`broker-proxy policy explain`: what the policy would do with one request, and why.

Answers from the same index and path rules the proxy uses, without a grant: for each secret
(or an agent's secrets), whether its placeholder would be swapped into this request, and whether
the request may go out at all without one. Grant checks (expiry, uses, approval) are per grant
and are not part of this answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.authority import AuthorityError, split_authority
from broker_proxy.policy.destinations import path_matches
from broker_proxy.policy.model import NEVER_METHODS, Destination
from broker_proxy.request.paths import AmbiguousPath, canonical_path


class ExplainError(ValueError):
    """A URL or method the explanation cannot be given for."""


@dataclass(frozen=True, slots=True)
class SecretAnswer:
    secret: str
    allowed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    method: str
    scheme: str
    host: str
    port: int
    path: str
    secrets: tuple[SecretAnswer, ...]
    without_secret: str  # "egress", "covered by <names>", or "" when refused
    # Media types (patterns) whose answers from this host are withheld: a destination's
    # `withhold`, applied whichever grant asks.
    withheld: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {
            "request": {"method": self.method, "scheme": self.scheme, "host": self.host,
                        "port": self.port, "path": self.path},
            "secrets": {a.secret: {"allowed": a.allowed, "reason": a.reason}
                        for a in self.secrets},
            "without_secret": {"allowed": bool(self.without_secret),
                               "reason": self.without_secret or "destination_not_granted"},
        }
        if self.withheld:  # only then: the output for other hosts stays as it was
            found["withheld_media_types"] = list(self.withheld)
        return found


def explain(policy: ActivePolicy, method: str, url: str, agent: str | None = None) -> Explanation:
    method = method.upper()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ExplainError(f"not an http(s) URL: {url!r}")
    try:
        host, port = split_authority(parts.netloc, parts.scheme)
    except AuthorityError as error:
        raise ExplainError(str(error)) from None
    names = sorted(policy.policy.secrets)
    if agent is not None:
        agent_policy = policy.policy.agents.get(agent)
        if agent_policy is None:
            raise ExplainError(f'agent "{agent}" is not in the policy')
        names = sorted(agent_policy.secrets)
    raw_path = parts.path or "/"
    try:
        path = canonical_path(raw_path)
    except AmbiguousPath as error:
        path = ""
        ambiguity = f"ambiguous_path: {error}"
    answers = []
    for name in names:
        if not path:
            answers.append(SecretAnswer(name, False, ambiguity))
            continue
        answer = _answer(policy, name, method, parts.scheme, host, port, path)
        answers.append(_with_approvals(policy, answer, agent))
    covering = policy.index.secrets_covering(parts.scheme, host, port) & set(names)
    if policy.index.egress_allows(host):
        without = "egress allow-list"
    elif covering:
        without = "covered by " + ", ".join(sorted(covering))
    else:
        without = ""
    rule = policy.index.withhold_at(host)
    return Explanation(method, parts.scheme, host, port, path or raw_path, tuple(answers),
                       without, rule.patterns if rule is not None else ())


def _answer(policy: ActivePolicy, name: str, method: str, scheme: str, host: str, port: int,
            path: str) -> SecretAnswer:
    if policy.index.allows(name, scheme, host, port, method, path):
        places = ", ".join(sorted(policy.policy.secrets[name].inject)) or "no placeholder"
        return SecretAnswer(name, True, f"destination allowed; placeholder swapped in: {places}")
    if method in NEVER_METHODS:
        return SecretAnswer(name, False, f"{method} never carries a secret")
    candidates = policy.index.destinations_for(name, scheme, host, port)
    if not candidates:
        if scheme == "http" and policy.index.destinations_for(name, "https", host, port):
            return SecretAnswer(name, False, "plaintext_http: only sent over https")
        return SecretAnswer(name, False, f"no destination of this secret covers "
                                         f"{scheme}://{host}:{port}")
    return SecretAnswer(name, False, _near_miss(candidates, method, path))


def _with_approvals(policy: ActivePolicy, answer: SecretAnswer,
                    agent: str | None) -> SecretAnswer:
    """An allowed secret may still wait for a person: say so, or the answer reads as 'goes'."""
    if not answer.allowed:
        return answer
    notes = []
    if agent is not None and answer.secret in policy.policy.agents[agent].approval:
        notes.append(f"a grant of {agent} holding it waits for approval (grant approve)")
    if policy.policy.secrets[answer.secret].per_request_approval:
        notes.append("each request is held for a person's approval (approval: per_request)")
    if not notes:
        return answer
    return SecretAnswer(answer.secret, True, answer.reason + "; " + "; ".join(notes))


def _near_miss(candidates: tuple[Destination, ...], method: str, path: str) -> str:
    for destination in candidates:
        if method not in destination.methods:
            return f"method {method} not in {sorted(destination.methods)}"
        if destination.paths and not any(path_matches(g, path) for g in destination.paths):
            return f"path {path} matches none of {list(destination.paths)}"
    return "destination_not_allowed"
