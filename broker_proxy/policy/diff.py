"""`policy diff OLD NEW`: what a policy change does for whom, each widening flagged.

Widening means some request, grant or agent that OLD refused NEW would allow: a new agent, a
secret an agent may now hold, an approval dropped, a longer max_ttl, a destination (host, port,
method or path) a secret may now reach, a new place a placeholder may sit, a new egress host or
private address range, a media type no longer withheld at a secret's host, an MCP tool or
GraphQL operation list widened (protocol_diff.py), a chat user or webhook given a role or a
higher one, a Slack workspace (`team_id`) dropped or changed, a chat user's `person` dropped or
changed (they could approve their own grants) (chat_rules.py). Everything else is
a narrowing or a neutral change; each is one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import timedelta

from broker_proxy.policy.chat_rules import ROLES, ChatRules, chat_people, chat_roles
from broker_proxy.policy.coverage import destination_covers, host_covers, uncovered_globs
from broker_proxy.policy.limit_diff import limit_changes
from broker_proxy.policy.media_types import pattern_covers
from broker_proxy.policy.model import Destination, Policy, SecretPolicy
from broker_proxy.policy.protocol_diff import protocol_changes
from broker_proxy.policy.resolve_pins import ResolvePins


@dataclass(frozen=True, slots=True)
class Change:
    kind: str  # stable: "agent_added", "destination_widened", ...
    subject: str  # "agents.NAME" or "secrets.NAME" or a top-level section
    detail: str
    widening: bool

    def __str__(self) -> str:
        flag = "WIDENS " if self.widening else "       "
        return f"{flag}{self.subject}: {self.detail}"


def describe(destination: Destination) -> str:
    default = {"https": 443, "http": 80}.get(destination.scheme)
    port = "" if destination.port == default else f":{destination.port}"
    return f"{destination.scheme}://{destination.host}{port}"


def diff_policies(old: Policy, new: Policy) -> list[Change]:
    changes: list[Change] = []
    changes += _named_sets("secret", old.secrets, new.secrets, widening_when_added=False)
    changes += _named_sets("agent", old.agents, new.agents, widening_when_added=True)
    for name in sorted(old.secrets.keys() & new.secrets.keys()):
        changes += _secret_changes(old.secrets[name], new.secrets[name])
    for name in sorted(old.agents.keys() & new.agents.keys()):
        changes += _agent_changes(name, old, new)
    changes += _list_changes("egress.allow", "host", old.egress_allow, new.egress_allow)
    changes += _list_changes("network.allow_addresses", "address range",
                             tuple(map(str, old.allow_addresses)),
                             tuple(map(str, new.allow_addresses)))
    # A pin decides which server gets a host's traffic (and its secrets): any new one widens.
    changes += _list_changes("network.resolve", "pin", ResolvePins(old.resolve).spelled(),
                             ResolvePins(new.resolve).spelled())
    changes += _chat_changes(chat_roles(old.chat), chat_roles(new.chat))
    changes += _chat_identity_changes(old.chat, new.chat)
    return changes


def _chat_identity_changes(old: ChatRules | None, new: ChatRules | None) -> list[Change]:
    """The Slack workspace and who each chat user is: dropping or changing either widens."""
    found = []
    was, now = (c.slack.team_id if c is not None and c.slack is not None else None
                for c in (old, new))
    if was != now:
        found.append(Change("chat_team_changed", "chat", f"chat.slack.team_id: {was or 'none'} "
                                                         f"-> {now or 'none'}", was is not None))
    before, after = chat_people(old), chat_people(new)
    for who in sorted(before.keys() | after.keys()):
        if before.get(who) != after.get(who):
            found.append(Change("chat_person_changed", "chat",
                                f"{who}: person {before.get(who) or 'none'} -> "
                                f"{after.get(who) or 'none'}", who in before))
    return found


def _chat_changes(before: dict[str, str], after: dict[str, str]) -> list[Change]:
    """Who may decide or read from chat: a new identity or a higher role widens."""
    found = []
    for who in sorted(before.keys() | after.keys()):
        was, now = before.get(who), after.get(who)
        if was == now:
            continue
        widening = now is not None and (was is None or ROLES.index(now) > ROLES.index(was))
        found.append(Change("chat_role_changed", "chat", f"{who}: {was or 'no role'} -> "
                                                         f"{now or 'no role'}", widening))
    return found


def _named_sets(kind: str, old: Mapping[str, object], new: Mapping[str, object], *,
                widening_when_added: bool) -> list[Change]:
    found = [Change(f"{kind}_added", f"{kind}s.{name}", f"{kind} added", widening_when_added)
             for name in sorted(new.keys() - old.keys())]
    found += [Change(f"{kind}_removed", f"{kind}s.{name}", f"{kind} removed", False)
              for name in sorted(old.keys() - new.keys())]
    return found


def _agent_changes(name: str, old: Policy, new: Policy) -> list[Change]:
    before, after = old.agents[name], new.agents[name]
    subject = f"agents.{name}"
    found = [Change("agent_secret_added", subject, f"may now be granted {secret}", True)
             for secret in sorted(after.secrets - before.secrets)]
    found += [Change("agent_secret_removed", subject, f"may no longer be granted {secret}",
                     False) for secret in sorted(before.secrets - after.secrets)]
    # An approval only matters for a secret the agent may still hold.
    found += [Change("approval_dropped", subject, f"grants of {secret} no longer wait for "
                     "approval", True)
              for secret in sorted((before.approval - after.approval) & after.secrets)]
    found += [Change("approval_added", subject, f"grants of {secret} now wait for approval",
                     False) for secret in sorted(after.approval - before.approval)]
    if after.max_ttl != before.max_ttl:
        longer = after.max_ttl > before.max_ttl
        detail = f"max_ttl {_duration(before.max_ttl)} -> {_duration(after.max_ttl)}"
        found.append(Change("max_ttl_raised" if longer else "max_ttl_lowered", subject, detail,
                            longer))
    return found


def _duration(span: timedelta) -> str:
    seconds = int(span.total_seconds())
    parts = [(seconds // 3600, "h"), (seconds % 3600 // 60, "m"), (seconds % 60, "s")]
    return "".join(f"{value}{unit}" for value, unit in parts if value) or "0s"


def _secret_changes(before: SecretPolicy, after: SecretPolicy) -> list[Change]:
    subject = f"secrets.{before.name}"
    found: list[Change] = []
    for destination in after.destinations:
        if not any(destination_covers(old, destination) for old in before.destinations):
            found.append(Change("destination_widened", subject,
                                _widening(destination, before.destinations), True))
    for destination in before.destinations:
        if not any(destination_covers(new, destination) for new in after.destinations):
            found.append(Change("destination_narrowed", subject,
                                _narrowing(destination, after.destinations), False))
    added, dropped = sorted(after.inject - before.inject), sorted(before.inject - after.inject)
    if added:
        found.append(Change("inject_widened", subject,
                            "placeholder may now sit in " + ", ".join(added), True))
    if dropped:
        found.append(Change("inject_narrowed", subject,
                            "placeholder may no longer sit in " + ", ".join(dropped), False))
    old_templates = {t.header.lower() for t in before.templates}
    for template in after.templates:
        if template.header.lower() not in old_templates:
            found.append(Change("template_added", subject,
                                f"the proxy now sets {template.header} itself", True))
    found += _withhold_changes(subject, before, after)
    if before.source != after.source:
        found.append(Change("source_changed", subject,
                            f"from {before.source} -> {after.source}", False))
    found += [Change(kind, subject, detail, widening)
              for kind, detail, widening in limit_changes(before, after)
              + protocol_changes(before, after)]
    return found


def _withheld_by_host(secret: SecretPolicy) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for destination in secret.destinations:
        found.setdefault(destination.host, set()).update(destination.withhold)
    return found


def _withhold_changes(subject: str, before: SecretPolicy, after: SecretPolicy) -> list[Change]:
    """A media type no longer withheld at a host the secret still goes to widens: answers that
    were replaced by a 502 now reach the agent. One withheld anew narrows. By host, as the
    proxy applies them."""
    old, new = _withheld_by_host(before), _withheld_by_host(after)
    found = []
    for host in sorted(old.keys() & new.keys()):
        for pattern in sorted(old[host]):
            if not any(pattern_covers(kept, pattern) for kept in new[host]):
                found.append(Change("withhold_removed", subject,
                                    f"answers of media type {pattern} from {host} are no "
                                    "longer withheld", True))
        for pattern in sorted(new[host]):
            if not any(pattern_covers(kept, pattern) for kept in old[host]):
                found.append(Change("withhold_added", subject,
                                    f"answers of media type {pattern} from {host} are "
                                    "withheld", False))
    return found


def _same_place(a: Destination, b: Destination) -> bool:
    return (a.scheme, a.port) == (b.scheme, b.port) and (
        host_covers(a.host, b.host) or host_covers(b.host, a.host))


def _widening(destination: Destination, olds: tuple[Destination, ...]) -> str:
    where = describe(destination)
    peers = [old for old in olds if _same_place(old, destination)]
    if not peers:
        return f"new destination {where} {_shape(destination)}"
    parts = []
    for old in peers:
        if old.host != destination.host and host_covers(destination.host, old.host):
            parts.append(f"host {old.host} -> {destination.host}")
        if more := sorted(destination.methods - old.methods):
            parts.append("methods +" + ",".join(more))
        if globs := uncovered_globs(old.paths, destination.paths):
            parts.append("paths +" + ",".join(globs))
        if old.aws is not None and destination.aws is not None:
            if more := sorted(destination.aws.services - old.aws.services):
                parts.append("aws services +" + ",".join(more))
            if more := sorted(destination.aws.regions - old.aws.regions):
                parts.append("aws regions +" + ",".join(more))
        if parts:
            break
    return f"{where} widened: " + ("; ".join(parts) or "covers more than before")


def _narrowing(destination: Destination, news: tuple[Destination, ...]) -> str:
    where = describe(destination)
    peers = [new for new in news if _same_place(new, destination)]
    if not peers:
        return f"destination {where} {_shape(destination)} removed"
    parts = []
    for new in peers:
        if new.host != destination.host and host_covers(destination.host, new.host):
            parts.append(f"host {destination.host} -> {new.host}")
        if fewer := sorted(destination.methods - new.methods):
            parts.append("methods -" + ",".join(fewer))
        if globs := uncovered_globs(new.paths, destination.paths):
            parts.append("paths no longer all of " + ",".join(globs))
        if parts:
            break
    return f"{where} narrowed: " + ("; ".join(parts) or "covers less than before")


def _shape(destination: Destination) -> str:
    paths = ",".join(destination.paths) or "/**"
    return f"[{','.join(sorted(destination.methods))} {paths}]"


def _list_changes(subject: str, what: str, old: tuple[str, ...],
                  new: tuple[str, ...]) -> list[Change]:
    found = []
    for item in new:
        if item not in old and not (what == "host" and any(host_covers(o, item) for o in old)):
            found.append(Change(f"{subject.split('.')[0]}_added", subject,
                                f"{what} {item} added", True))
    for item in old:
        if item not in new and not (what == "host" and any(host_covers(n, item) for n in new)):
            found.append(Change(f"{subject.split('.')[0]}_removed", subject,
                                f"{what} {item} removed", False))
    return found


def as_json(changes: list[Change]) -> dict[str, object]:
    return {"widening": any(change.widening for change in changes),
            "changes": [asdict(change) for change in changes]}
