"""`policy replay --audit LOG NEW`: every decision the log records, decided again under NEW.

The audit record keeps the request's facts (agent, grant, method, scheme, host, port, path
without query) and, for a use, the secrets swapped in; `grant_issued` records give each grant's
secrets. Each distinct set of facts is decided once more by ``Broker.decide`` (harness.py) under
NEW, with the placeholders put where NEW lets them sit, and the answer is reused for every record
with the same facts: logs repeat themselves, which is what makes a million records fast.

A path takes part in the decision only through NEW's destination index (does each secret of the
grant match it?) and through whether it is canonical. So two records that differ only in a path
with the same answers share one decision: the key holds those answers, not the path (an
ambiguous path keeps its own key). Without that, every issue number in a URL would cost a full
decision.

What the log does not keep cannot be replayed: where the placeholder sat (a narrower ``inject``
is not seen), the headers and body, and, for a refusal, which secret's placeholder was refused
(each secret of the grant is tried; "now allowed" then names the one that would pass).
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from broker_proxy.approvals.verdict import APPROVAL_REQUIRED, APPROVAL_UNAVAILABLE
from broker_proxy.audit.files import chain_files, chains_in
from broker_proxy.policy.model import Policy
from broker_proxy.policy_tools.harness import DecisionHarness, TestGrant, throwaway_harness
from broker_proxy.policy_tools.request_builder import Placement, RequestError, build_request
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, Verdict
from broker_proxy.request.paths import AmbiguousPath, canonical_path

# Refusals that depend on the policy, and so may change under NEW. Every other recorded reason
# (grant expired or revoked, bad token, malformed request, a backend down, ...) is about the
# grant or the request, not the policy, and is kept as recorded.
_ALLOWS = frozenset({codes.INJECTED, codes.RESIGNED, codes.ALLOWED})
# placeholder_not_allowed_here and header_already_set are kept as recorded too: they turn on
# where the placeholder sat and which headers the agent sent, which the log does not keep, so
# re-deciding them would report the unchanged policy as a change.
_PLACEMENT_REFUSALS = frozenset({codes.DESTINATION_NOT_ALLOWED, codes.PLAINTEXT_HTTP,
                                 codes.AWS_SCOPE_NOT_ALLOWED})
_PLAIN_REFUSALS = frozenset({codes.DESTINATION_NOT_GRANTED, codes.GRANT_OUTSIDE_POLICY})
_PLACE_ORDER = ("header", "query", "body", "basic")
_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-[0-9]+")
_WAITS_FOR_A_PERSON = frozenset({APPROVAL_UNAVAILABLE, APPROVAL_REQUIRED})
MAX_EXAMPLES = 3
_PATH_MEMO_SIZE = 200_000


@dataclass
class ReplayReport:
    records: int = 0  # request records read
    unchanged: int = 0
    kept: int = 0  # not policy decisions: counted as unchanged, not re-decided
    now_refused: Counter[str] = field(default_factory=Counter)
    now_allowed: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    assumed_grants: int = 0  # records whose grant's secrets were not in the log
    unreadable: int = 0  # lines that are not audit records

    def as_dict(self) -> dict[str, object]:
        return {"records": self.records, "unchanged": self.unchanged, "kept": self.kept,
                "now_refused": dict(self.now_refused), "now_allowed": dict(self.now_allowed),
                "examples": dict(self.examples), "assumed_grants": self.assumed_grants,
                "unreadable": self.unreadable}


_Key = tuple[str, tuple[str, ...], str, str, tuple[str, ...], str, str, str, int, object, bool]


class Replayer:
    def __init__(self, harness: DecisionHarness, *, group_paths: bool = True) -> None:
        """``group_paths=False`` keys every distinct path on its own (slower; for checking)."""
        self._harness = harness
        self._group_paths = group_paths
        self._policy = harness.policy
        self._index = harness.broker.policy.index
        self._answers: dict[_Key, tuple[str, str] | None] = {}
        self._path_memo: dict[tuple[tuple[str, ...], str, str, str, int, str], object] = {}
        self._approved_grants: set[str] = set()

    def replay(self, paths: list[Path]) -> ReplayReport:
        report = ReplayReport()
        grant_secrets: dict[str, tuple[str, ...]] = {}
        for path in paths:
            with open(path, "rb") as handle:
                for line in handle:
                    try:
                        if b'"event":"request"' in line:
                            record = json.loads(line.decode())
                            if record.get("decision") == "held":
                                # A person decides this grant's requests: its later uses were
                                # approved, which no policy replay can (or should) repeat.
                                self._approved_grants.add(str(record.get("grant")))
                            self._one(record, grant_secrets, report)
                        elif b'"event":"grant_issued"' in line:
                            record = json.loads(line)
                            grant_secrets[record.get("grant")] = tuple(record.get("secrets")
                                                                       or ())
                    except (ValueError, TypeError, AttributeError):
                        # A torn last line or a foreign one: counted, never guessed at.
                        report.unreadable += 1
        return report

    def _one(self, record: dict[str, Any], grant_secrets: dict[str, tuple[str, ...]],
             report: ReplayReport) -> None:
        report.records += 1
        reason = record.get("reason") or ""
        agent = record.get("agent")
        if agent is None or not (reason in _ALLOWS or reason in _PLACEMENT_REFUSALS
                                 or reason in _PLAIN_REFUSALS):
            report.unchanged += 1
            report.kept += 1
            return
        secrets = tuple(record.get("secrets") or ())
        held = grant_secrets.get(str(record.get("grant")))
        if held is None:
            report.assumed_grants += 1
            agent_policy = self._policy.agents.get(agent)
            held = tuple(sorted(set(secrets) | (agent_policy.secrets if agent_policy else set())))
        method, scheme = record.get("method") or "", record.get("scheme") or ""
        host, port = record.get("host") or "", int(record.get("port") or 0)
        path = record.get("path") or "/"
        key: _Key = (agent, held, record.get("decision") or "", reason, secrets, method, scheme,
                     host, port, self._path_answers(held, method, scheme, host, port, path),
                     str(record.get("grant")) in self._approved_grants)
        answer = self._answers.get(key, _UNSEEN)
        if answer is _UNSEEN:
            try:
                answer = self._redecide(key, path)
            except RequestError:  # facts no request can be built from: kept as recorded
                answer = _KEPT
            self._answers[key] = answer
        if answer is _KEPT:
            report.unchanged += 1
            report.kept += 1
            return
        if answer is None:
            report.unchanged += 1
            return
        bucket, label = answer
        counter = report.now_refused if bucket == "refused" else report.now_allowed
        counter[label] += 1
        examples = report.examples[f"{bucket}:{label}"]
        if len(examples) < MAX_EXAMPLES:
            examples.append(f"{method} {scheme}://{host}:{port}{path} "
                            f"(agent {agent}, grant {record.get('grant')}, was {reason})")

    def _path_answers(self, held: tuple[str, ...], method: str, scheme: str, host: str,
                      port: int, path: str) -> object:
        """What the decision needs to know of ``path``: see the module docstring."""
        memo_key = (held, method, scheme, host, port, path)
        found = self._path_memo.get(memo_key)
        if found is not None:
            return found
        if len(self._path_memo) >= _PATH_MEMO_SIZE:
            self._path_memo.clear()  # bounded memory on a log of endlessly varied paths
        if not self._group_paths or not _is_canonical(path):
            found = path
        else:
            allows = self._index.allows
            found = tuple(allows(name, scheme, host, port, method, path) for name in held)
        self._path_memo[memo_key] = found
        return found

    def _redecide(self, key: _Key, path: str) -> tuple[str, str] | None:
        """None when NEW decides as the log says; else ("refused"|"allowed", label)."""
        agent, held, decision, reason, secrets, method, scheme, host, port, _, approved = key
        grant = self._harness.grant(agent, held)
        url = f"{scheme}://{_authority(host, port)}{path}"
        if decision == "allow":
            verdict = grant if isinstance(grant, Denied) else self._decide(grant, method, url,
                                                                           secrets)
            if isinstance(verdict, Denied) and verdict.error in _WAITS_FOR_A_PERSON:
                # NEW holds it for a person (the replay has nobody to ask): the same as the
                # log when its grant's requests were held and approved there too.
                return None if approved else ("refused", APPROVAL_REQUIRED)
            if isinstance(verdict, Denied):
                return ("refused", verdict.error)
            if tuple(sorted(verdict.injected)) != tuple(sorted(secrets)):
                return ("allowed", "injects " + (", ".join(sorted(verdict.injected)) or
                                                 "nothing"))
            return None
        if isinstance(grant, Denied):
            return None  # still refused, for the grant this time
        tries = [()] if reason in _PLAIN_REFUSALS else [(name,) for name in held]
        for names in tries:
            verdict = self._decide(grant, method, url, names)
            if isinstance(verdict, Allowed):
                label = ("injects " + ", ".join(verdict.injected)) if verdict.injected \
                    else "without secret"
                return ("allowed", label)
        return None

    def _decide(self, grant: TestGrant, method: str, url: str,
                secrets: tuple[str, ...]) -> Verdict:
        placements = tuple(p for p in (self._placement(grant, name, url) for name in secrets)
                           if p is not None)
        return self._harness.decide(grant, build_request(method, url, placements=placements))

    def _placement(self, grant: TestGrant, name: str, url: str) -> Placement | None:
        secret = self._policy.secrets.get(name)
        if secret is None:
            return None
        placeholder = grant.placeholders.get(name) or secret.placeholder
        if secret.sign is not None:
            service, region = _aws_scope(url)
            return Placement(placeholder, "sigv4", aws_service=service, aws_region=region)
        place = next((p for p in _PLACE_ORDER if p in secret.inject), None)
        # A secret placed only by a header template needs no placeholder at all.
        return Placement(placeholder, place) if place else None


_UNSEEN = ("", "")
_KEPT = ("kept", "")


@lru_cache(maxsize=65536)
def _is_canonical(path: str) -> bool:
    try:
        return canonical_path(path) == path
    except AmbiguousPath:
        return False


def _authority(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _aws_scope(url: str) -> tuple[str, str]:
    """The service and region an SDK would sign for at this AWS host, as far as it shows.

    The service is the label before the region (`bucket.s3.eu-west-1.amazonaws.com`), or, on
    a global name, the last label before `amazonaws.com` (`sts.amazonaws.com`, and S3's
    `bucket.s3.amazonaws.com`, where the bucket comes first); global names sign us-east-1."""
    labels = url.split("://", 1)[1].split("/", 1)[0].split(":")[0].split(".")
    for index, label in enumerate(labels):
        if _REGION.fullmatch(label):
            return (labels[index - 1] if index else "s3"), label
    if "amazonaws" in labels[1:]:
        return labels[labels.index("amazonaws") - 1], "us-east-1"
    return labels[0], "us-east-1"


def replay_log(policy: Policy, log: Path, *, group_paths: bool = True) -> ReplayReport:
    """Replay ``log`` (a file, with its rotated archives, or a directory of chains)."""
    with throwaway_harness(policy) as harness:
        return Replayer(harness, group_paths=group_paths).replay(_log_files(log))


def _log_files(log: Path) -> list[Path]:
    if log.is_dir():
        return [path for live in chains_in(log) for path in chain_files(live)]
    return chain_files(log) or [log]
