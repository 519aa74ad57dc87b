"""The access-review report: what each grant was, who decided, what it did, what looked wrong.

One pass over the records (see reading.py), in memory bounded by the number of grants and of
distinct (secret, destination, method, path) groups, never by the number of records: counts are
kept, records are not. Each finding keeps at most `EVIDENCE_LIMIT` references to the records
behind it (`log#seq`), and says how many there were in all.

The result is a plain dict in the shape of `schemas/audit-report.v1.json` (REPORT_SCHEMA); the
text, CSV and HTML forms are renderings of that dict, so every format says the same thing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any, Final

from broker_proxy.audit.path_templates import PathTemplate
from broker_proxy.audit.reading import LOG_TAG
from broker_proxy.audit.report_actions import GrantActions
from broker_proxy.audit.report_holds import HOLD_OUTCOMES, HOLD_REFUSALS, HeldItem
from broker_proxy.audit.report_llm import GrantLlm, agent_llm, model_llm

REPORT_SCHEMA: Final = "broker-proxy/audit-report/v1"
EVIDENCE_LIMIT: Final = 20
# A minute with this many uses, and BURST_FACTOR times the grant's own mean per active minute,
# is a burst. The floor keeps a grant that makes three calls in a minute after one a minute
# from looking like an attack.
BURST_MIN_USES: Final = 20
BURST_FACTOR: Final = 5.0
FAST_APPROVAL_SECONDS: Final = 1.0
# Refusals that mean a placeholder was sent where its secret may not go: exfiltration attempts.
EXFILTRATION_CODES: Final = frozenset({
    "destination_not_allowed", "secret_not_granted", "plaintext_http",
    "placeholder_not_allowed_here",
})
GRANT_EVENTS: Final = frozenset({
    "grant_issued", "grant_approved", "grant_denied", "grant_revoked", "grant_expired",
})
USE_REASONS: Final = frozenset({"injected", "resigned"})

WITHHELD_REASON: Final = "response_withheld"


@dataclass(frozen=True, slots=True)
class Scope:
    """Which records a report covers; None means no restriction."""

    agent: str | None = None
    task: str | None = None
    grant: str | None = None
    secret: str | None = None
    since: str | None = None  # normalised timestamps (see normalise_time), compared as text
    until: str | None = None
    window: tuple[time, time] | None = None  # usual hours (UTC); activity outside is flagged

    def as_dict(self) -> dict[str, Any]:
        window = None
        if self.window is not None:
            window = f"{self.window[0]:%H:%M}-{self.window[1]:%H:%M}"
        return {"agent": self.agent, "task": self.task, "grant": self.grant,
                "secret": self.secret, "since": self.since, "until": self.until,
                "window": window}


def normalise_time(text: str) -> str:
    """`2026-11-28`, `2026-11-28T10:00`, `...+02:00` -> the log's own `...T08:00:00.000Z` form."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_window(text: str) -> tuple[time, time]:
    """`08:00-18:00` (UTC); a window may wrap midnight (`22:00-06:00`)."""
    try:
        start, end = text.split("-", 1)
        return time.fromisoformat(start.strip()), time.fromisoformat(end.strip())
    except ValueError:
        raise ValueError(f"window must look like 08:00-18:00, not {text!r}") from None


def _parse_ts(ts: str) -> datetime | None:
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None


# A use's group: (secret names, scheme, host, port, method, path template or path).
_UseKey = tuple[tuple[str, ...], str | None, str | None, int | None, str | None, str | None]


@dataclass(slots=True)
class _Minute:  # one active minute of a grant: how many uses, the first and the last
    count: int
    first: str
    last: str


def _ref(record: dict[str, Any]) -> str:
    return f"{record.get(LOG_TAG, 'audit.log')}#{record['seq']}"


class _Evidence:
    """A count and the first few records behind a finding."""

    __slots__ = ("count", "first", "last", "refs")

    def __init__(self) -> None:
        self.count = 0
        self.refs: list[str] = []
        self.first: str | None = None
        self.last: str | None = None

    def add(self, record: dict[str, Any]) -> None:
        self.count += 1
        if len(self.refs) < EVIDENCE_LIMIT:
            self.refs.append(_ref(record))
        ts = record.get("ts")
        if self.first is None:
            self.first = ts
        self.last = ts


@dataclass(slots=True)
class _UseGroup:
    count: int = 0
    first: str | None = None
    last: str | None = None
    statuses: Counter[str] = field(default_factory=Counter)


@dataclass(slots=True)
class _GrantFacts:
    grant_id: str
    agent: str | None = None
    task: str | None = None
    secrets: list[str] = field(default_factory=list)
    issued_at: str | None = None
    issued_by: str | None = None
    expires_at: str | None = None
    max_uses: int | None = None
    issued_status: str | None = None
    decision: str | None = None  # approved / denied
    decided_by: str | None = None
    decided_at: str | None = None
    revoked_at: str | None = None
    revoked_by: str | None = None
    revoke_reason: str | None = None
    expired_at: str | None = None
    uses: int = 0
    passthrough: int = 0  # allowed requests that carried no secret
    groups: dict[_UseKey, _UseGroup] = field(default_factory=dict)
    refusals: dict[str, Counter[str]] = field(default_factory=dict)  # reason -> destinations
    redactions: int = 0
    scrub_events: int = 0
    withheld: int = 0
    minutes: dict[str, _Minute] = field(default_factory=dict)  # minute -> its uses
    last_use: tuple[str, str] | None = None  # (ts, ref) of the latest use, for pairing responses
    holds: dict[str, HeldItem] = field(default_factory=dict)  # the first EVIDENCE_LIMIT holds
    hold_counts: Counter[str] = field(default_factory=Counter)  # outcome -> held requests
    llm: GrantLlm = field(default_factory=GrantLlm)  # tokens and cost by model
    actions: GrantActions = field(default_factory=GrantActions)  # MCP tools, GraphQL operations

    def label_target(self, record: dict[str, Any]) -> str:
        return f"{record.get('host')}:{record.get('port')}"


class ReportBuilder:
    """Feed records in log order with `feed`; `result()` gives the report dict."""

    def __init__(self, scope: Scope | None = None,
                 path_template: PathTemplate | None = None) -> None:
        self.scope = scope or Scope()
        self._everything = self.scope == Scope()  # no filter: skip the per-record checks
        self._template = path_template
        self._grants: dict[str, _GrantFacts] = {}
        self._anomalies: dict[tuple[str, str, str], tuple[str, _Evidence]] = {}
        self._refusals: dict[str, Counter[str]] = {}
        self._refusal_counts: Counter[str] = Counter()
        self._daily: dict[str, Counter[str]] = {}
        self._policy_changes: list[dict[str, Any]] = []
        self._removed_by_policy: dict[str, str] = {}  # grant -> ts of the revocation
        self._records = 0
        self._first_ts: str | None = None
        self._last_ts: str | None = None

    # ---- scope -------------------------------------------------------------------------------

    def _in_scope(self, record: dict[str, Any], facts: _GrantFacts | None) -> bool:
        scope = self.scope
        if self._everything:
            return True
        ts = record.get("ts") or ""
        if scope.since is not None and ts < scope.since:
            return False
        if scope.until is not None and ts >= scope.until:
            return False
        if scope.grant is not None and record.get("grant") != scope.grant:
            return False
        agent = record.get("agent") or (facts.agent if facts else None)
        if scope.agent is not None and agent != scope.agent:
            return False
        task = record.get("task") or (facts.task if facts else None)
        if scope.task is not None and task != scope.task:
            return False
        if scope.secret is not None:
            names = record.get("secrets") or (facts.secrets if facts else [])
            if scope.secret not in names:
                return False
        return True

    # ---- feeding -----------------------------------------------------------------------------

    def feed(self, record: dict[str, Any]) -> None:
        event = record.get("event")
        grant_id = record.get("grant")
        facts = self._grants.get(grant_id) if isinstance(grant_id, str) else None
        if not isinstance(grant_id, str) and self._unfiltered() and self._scope_time(record):
            self._count(record)  # proxy and policy records belong to a report on everything
        if event in ("policy_reloaded", "policy_loaded"):
            if self._scope_time(record):
                self._policy_changes.append({"ts": record.get("ts"), "event": event,
                                             "policy": record.get("policy"), "ref": _ref(record)})
            return
        if not isinstance(grant_id, str):
            if event == "request" and record.get("decision") == "deny" and self._in_scope(
                    record, None):
                if not self._unfiltered():
                    self._count(record)
                self._refuse(None, record)
            return
        if facts is None:
            facts = self._grants[grant_id] = _GrantFacts(grant_id)
        # Learn who the grant belongs to even from records outside the scope, so that a response
        # (which names only the grant) is attributed to the right agent.
        facts.agent = facts.agent or record.get("agent")
        facts.task = facts.task or record.get("task")
        if not facts.secrets and record.get("secrets") and event in GRANT_EVENTS:
            facts.secrets = list(record["secrets"])
        if event == "grant_revoked" and record.get("by") == "policy-reload":
            self._removed_by_policy[grant_id] = record.get("ts") or ""
        if not self._in_scope(record, facts):
            return
        self._count(record)
        if event in GRANT_EVENTS:
            self._grant_event(facts, event, record)
        elif event == "request":
            self._request(facts, record)
        elif event == "response":
            self._response(facts, record)
        elif event == "request_not_sent" and record.get("use_returned"):
            # The use its request record counted was given back: the secret never left.
            facts.uses = max(0, facts.uses - 1)
            day = (record.get("ts") or "")[:10]
            self._daily.setdefault(day, Counter())["uses"] -= 1
        elif isinstance(record.get("hold"), str):
            self._hold_ended(facts, str(event), record)

    def _unfiltered(self) -> bool:
        scope = self.scope
        return scope.agent is None and scope.task is None and scope.grant is None and \
            scope.secret is None

    def _scope_time(self, record: dict[str, Any]) -> bool:
        ts = record.get("ts") or ""
        return ((self.scope.since is None or ts >= self.scope.since)
                and (self.scope.until is None or ts < self.scope.until))

    def _count(self, record: dict[str, Any]) -> None:
        self._records += 1
        ts = record.get("ts")
        if isinstance(ts, str):
            if self._first_ts is None:
                self._first_ts = ts
            self._last_ts = ts

    def _anomaly(self, kind: str, grant: str | None, key: str, message: str,
                 record: dict[str, Any]) -> None:
        slot = (kind, grant or "", key)
        if slot not in self._anomalies:
            self._anomalies[slot] = (message, _Evidence())
        self._anomalies[slot][1].add(record)

    def _grant_event(self, facts: _GrantFacts, event: str, record: dict[str, Any]) -> None:
        ts = record.get("ts")
        if event == "grant_issued":
            facts.issued_at, facts.issued_by = ts, record.get("by")
            facts.expires_at = record.get("expires_at")
            facts.max_uses = record.get("max_uses")
            facts.issued_status = record.get("grant_status")
            facts.secrets = list(record.get("secrets") or facts.secrets)
        elif event in ("grant_approved", "grant_denied"):
            facts.decision = "approved" if event == "grant_approved" else "denied"
            facts.decided_by, facts.decided_at = record.get("by"), ts
            waited = _seconds_between(facts.issued_at, ts)
            if waited is not None and waited < FAST_APPROVAL_SECONDS:
                self._anomaly("fast_approval", facts.grant_id, "",
                              f"{facts.decision} {waited:.3f} s after it was issued", record)
        elif event == "grant_revoked":
            facts.revoked_at, facts.revoked_by = ts, record.get("by")
            facts.revoke_reason = record.get("reason")
        elif event == "grant_expired":
            facts.expired_at = record.get("expires_at") or ts

    def _request(self, facts: _GrantFacts, record: dict[str, Any]) -> None:
        ts = record.get("ts") or ""
        day = ts[:10]
        if record.get("decision") == "deny":
            self._refuse(facts, record)
            facts.actions.feed(record, refused=True)
            self._daily.setdefault(day, Counter())["refusals"] += 1
            return
        if record.get("decision") == "held":
            self._held(facts, record)
            facts.actions.hold(record.get("hold"), record)
            return
        if record.get("reason") not in USE_REASONS:
            facts.passthrough += 1
            return
        self._daily.setdefault(day, Counter())["uses"] += 1
        facts.uses += 1
        facts.actions.feed(record, refused=False)
        key = self._group_key(record)
        group = facts.groups.get(key)
        if group is None:
            group = facts.groups[key] = _UseGroup(first=ts)
        group.count += 1
        group.last = ts
        facts.last_use = (ts, _ref(record))
        minute = facts.minutes.get(ts[:16])
        if minute is None:
            facts.minutes[ts[:16]] = _Minute(1, _ref(record), _ref(record))
        else:
            minute.count += 1
            minute.last = _ref(record)
        removed = self._removed_by_policy.get(facts.grant_id)
        if removed is not None and ts >= removed:
            self._anomaly("use_after_policy_change", facts.grant_id, "",
                          f"used after a policy change removed its access (revoked at {removed})",
                          record)
        elif facts.revoked_at is not None and ts >= facts.revoked_at:
            self._anomaly("use_after_revocation", facts.grant_id, "",
                          f"used after it was revoked at {facts.revoked_at}", record)
        if self.scope.window is not None and not _within(ts, self.scope.window):
            self._anomaly("outside_window", facts.grant_id, "",
                          "secret used outside the usual hours", record)
        if facts.max_uses is not None and facts.uses == facts.max_uses:
            self._anomaly("grant_used_up", facts.grant_id, "",
                          f"all {facts.max_uses} uses spent (the last use, then any "
                          "refusals for it)", record)

    def _held(self, facts: _GrantFacts, record: dict[str, Any]) -> None:
        hold = record.get("hold")
        facts.hold_counts["held"] += 1
        facts.hold_counts["pending"] += 1
        if not isinstance(hold, str) or len(facts.holds) >= EVIDENCE_LIMIT:
            return
        facts.holds[hold] = HeldItem(
            hold, record.get("ts"), record.get("method"),
            f"{record.get('scheme')}://{record.get('host')}:{record.get('port')}",
            record.get("path"), list(record.get("secrets") or []), record.get("digest"),
            _ref(record))

    def _hold_ended(self, facts: _GrantFacts, event: str, record: dict[str, Any]) -> None:
        outcome = HOLD_OUTCOMES.get(event, event)
        facts.actions.hold_ended(record.get("hold"), outcome in HOLD_REFUSALS)
        if facts.hold_counts["pending"] > 0:
            facts.hold_counts["pending"] -= 1
        facts.hold_counts[outcome] += 1
        item = facts.holds.get(record["hold"])
        if item is not None and item.outcome == "pending":
            item.outcome, item.choice = outcome, record.get("reason")
            item.by, item.decided_at = record.get("by"), record.get("ts")
            item.message = record.get("message")
            item.shown = record.get("shown_digest")
        if (code := HOLD_REFUSALS.get(outcome)) is not None:
            target = f"{record.get('host')}:{record.get('port')}"
            facts.refusals.setdefault(code, Counter())[target] += 1
            self._refusals.setdefault(code, Counter())[target] += 1
            self._refusal_counts[code] += 1
            self._daily.setdefault((record.get("ts") or "")[:10], Counter())["refusals"] += 1

    def _group_key(self, record: dict[str, Any]) -> _UseKey:
        names = tuple(record.get("secrets") or ())
        host, port, path = record.get("host"), record.get("port"), record.get("path")
        if self._template is not None:
            path = self._template(names, host, port, path) or path
        return (names, record.get("scheme"), host, port, record.get("method"), path)

    def _response(self, facts: _GrantFacts, record: dict[str, Any]) -> None:
        status = record.get("status")
        group = facts.groups.get(self._group_key(record))
        if group is not None:
            group.statuses["none" if status is None else str(status)] += 1
        redactions = record.get("redactions") or 0
        if isinstance(redactions, int) and redactions > 0:
            facts.redactions += redactions
            facts.scrub_events += 1
            self._anomaly("secret_echoed", facts.grant_id,
                          f"{record.get('host')}:{record.get('port')}",
                          f"the upstream sent a secret back; {redactions} occurrence(s) "
                          "replaced", record)
        if record.get("withheld") or record.get("reason") == WITHHELD_REASON:
            facts.withheld += 1
        facts.llm.feed(record)

    def _refuse(self, facts: _GrantFacts | None, record: dict[str, Any]) -> None:
        reason = str(record.get("reason"))
        target = f"{record.get('host')}:{record.get('port')}"
        self._refusals.setdefault(reason, Counter())[target] += 1
        self._refusal_counts[reason] += 1
        if facts is not None:
            facts.refusals.setdefault(reason, Counter())[target] += 1
            if reason == "grant_used_up":
                spent = f"all {facts.max_uses}" if facts.max_uses is not None else "all its"
                self._anomaly("grant_used_up", facts.grant_id, "",
                              f"{spent} uses spent; later requests refused", record)
        if reason in EXFILTRATION_CODES:
            self._anomaly("exfiltration_attempt", facts.grant_id if facts else None, target,
                          f"placeholder sent to {target}, which its secret may not reach "
                          f"({reason})", record)
        if self.scope.window is not None and not _within(record.get("ts") or "",
                                                         self.scope.window):
            self._anomaly("outside_window", facts.grant_id if facts else None, "",
                          "refused request outside the usual hours", record)

    # ---- result ------------------------------------------------------------------------------

    def result(self) -> dict[str, Any]:
        grants = [self._grant_dict(facts) for facts in self._grants.values()
                  if self._grant_in_report(facts)]
        grants.sort(key=lambda g: (g["issued_at"] or g["first_seen"] or "", g["id"]))
        self._bursts()
        anomalies = [
            {"kind": kind, "grant": grant or None, "target": key or None, "message": message,
             "count": evidence.count, "first": evidence.first, "last": evidence.last,
             "records": evidence.refs}
            for (kind, grant, key), (message, evidence) in self._anomalies.items()
            if grant == "" or grant in {g["id"] for g in grants}
        ]
        anomalies.sort(key=lambda a: (a["first"] or "", a["kind"], a["grant"] or ""))
        return {
            "schema": REPORT_SCHEMA,
            "scope": self.scope.as_dict(),
            "period": {"first": self._first_ts, "last": self._last_ts},
            "records": self._records,
            "grants": grants,
            "refusals": _refusal_list(self._refusals),
            "anomalies": anomalies,
            "policy_changes": self._policy_changes[:EVIDENCE_LIMIT],
            "summary": {"agents": _agent_summary(grants), "secrets": _secret_summary(grants),
                        "llm_agents": agent_llm(grants), "llm_models": model_llm(grants)},
            "daily": [{"day": day, "uses": counts["uses"], "refusals": counts["refusals"]}
                      for day, counts in sorted(self._daily.items())],
        }

    def _grant_in_report(self, facts: _GrantFacts) -> bool:
        touched = (facts.issued_at or facts.decided_at or facts.revoked_at or facts.expired_at
                   or facts.uses or facts.passthrough or facts.refusals or facts.scrub_events
                   or facts.hold_counts)
        return bool(touched)

    def _bursts(self) -> None:
        for facts in self._grants.values():
            if len(facts.minutes) < 2:
                continue
            total = sum(minute.count for minute in facts.minutes.values())
            for stamp, minute in facts.minutes.items():
                count, first, last = minute.count, minute.first, minute.last
                others = (total - count) / (len(facts.minutes) - 1)
                if count >= BURST_MIN_USES and count >= BURST_FACTOR * max(others, 1.0):
                    slot = ("burst", facts.grant_id, stamp)
                    evidence = _Evidence()
                    evidence.count, evidence.refs = count, [first, last]
                    evidence.first = evidence.last = stamp + ":00Z"
                    self._anomalies[slot] = (
                        f"{count} uses in the minute from {stamp}Z, against "
                        f"{others:.1f} a minute in its other active minutes", evidence)

    def _grant_dict(self, facts: _GrantFacts) -> dict[str, Any]:
        uses: list[dict[str, Any]] = []
        for (names, scheme, host, port, method, path), group in facts.groups.items():
            for name in names or ("",):
                uses.append({"secret": name or None, "scheme": scheme, "host": host,
                             "port": port, "method": method, "path": path,
                             "count": group.count, "first": group.first, "last": group.last,
                             "statuses": dict(sorted(group.statuses.items()))})
        uses.sort(key=lambda u: (u["secret"] or "", u["host"] or "", u["port"] or 0,
                                 u["method"] or "", u["path"] or ""))
        waited = _seconds_between(facts.issued_at, facts.decided_at)
        approval = None
        if facts.issued_status == "pending" or facts.decision is not None:
            approval = {"requested": facts.issued_status == "pending" or None,
                        "decision": facts.decision, "by": facts.decided_by,
                        "at": facts.decided_at,
                        "waited_seconds": round(waited, 3) if waited is not None else None}
        return {
            "id": facts.grant_id, "agent": facts.agent, "task": facts.task,
            "secrets": facts.secrets, "issued_at": facts.issued_at,
            "issued_by": facts.issued_by, "expires_at": facts.expires_at,
            "max_uses": facts.max_uses,
            "first_seen": min((u["first"] for u in uses if u["first"]), default=None),
            "approval": approval,
            "uses": facts.uses,
            "uses_left": (facts.max_uses - facts.uses) if facts.max_uses is not None else None,
            "requests_without_secret": facts.passthrough,
            "uses_by_target": uses,
            "refusals": _refusal_list(facts.refusals),
            "scrubbed": {"responses": facts.scrub_events, "occurrences": facts.redactions},
            "withheld": facts.withheld,
            "revoked": ({"at": facts.revoked_at, "by": facts.revoked_by,
                         "reason": facts.revoke_reason} if facts.revoked_at else None),
            "expired_at": facts.expired_at,
            "held_requests": {
                "count": facts.hold_counts["held"],
                "outcomes": {k: v for k, v in sorted(facts.hold_counts.items())
                             if k != "held" and v},
                "items": [item.as_dict() for item in facts.holds.values()]},
            "llm": facts.llm.as_dict(facts.refusals),
            "actions": facts.actions.as_dict(),
        }


def build_report(records: Iterable[dict[str, Any]], scope: Scope | None = None,
                 path_template: PathTemplate | None = None) -> dict[str, Any]:
    builder = ReportBuilder(scope, path_template)
    for record in records:
        builder.feed(record)
    return builder.result()


def _refusal_list(refusals: dict[str, Counter[str]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"reason": reason, "count": sum(targets.values()),
             "destinations": [{"target": target, "count": count}
                              for target, count in sorted(targets.items(),
                                                          key=lambda kv: (-kv[1], kv[0]))]}
            for reason, targets in refusals.items()]
    rows.sort(key=lambda row: (-int(row["count"]), str(row["reason"])))
    return rows


def _agent_summary(grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for grant in grants:
        row = rows.setdefault(grant["agent"] or "?", {
            "agent": grant["agent"] or "?", "grants": 0, "uses": 0, "refusals": 0,
            "scrubbed": 0, "revoked": 0})
        row["grants"] += 1
        row["uses"] += grant["uses"]
        row["refusals"] += sum(r["count"] for r in grant["refusals"])
        row["scrubbed"] += grant["scrubbed"]["responses"]
        row["revoked"] += 1 if grant["revoked"] else 0
    return sorted(rows.values(), key=lambda row: row["agent"])


def _secret_summary(grants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for grant in grants:
        for name in grant["secrets"]:
            row = rows.setdefault(name, {"secret": name, "grants": 0, "uses": 0,
                                         "destinations": []})
            row["grants"] += 1
        for use in grant["uses_by_target"]:
            if use["secret"] is None:
                continue
            row = rows.setdefault(use["secret"], {"secret": use["secret"], "grants": 0,
                                                  "uses": 0, "destinations": []})
            row["uses"] += use["count"]
            target = f"{use['host']}:{use['port']}"
            if target not in row["destinations"]:
                row["destinations"].append(target)
    for row in rows.values():
        row["destinations"].sort()
    return sorted(rows.values(), key=lambda row: row["secret"])


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    a, b = _parse_ts(start), _parse_ts(end)
    if a is None or b is None:
        return None
    return (b - a).total_seconds()


def _within(ts: str, window: tuple[time, time]) -> bool:
    moment = _parse_ts(ts)
    if moment is None:
        return True
    now = moment.time().replace(tzinfo=None)
    start, end = window
    if start <= end:
        return start <= now < end
    return now >= start or now < end
