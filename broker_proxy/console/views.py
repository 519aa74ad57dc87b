"""Read-only views the console needs from the admin API: the active policy as data and the audit
chain's status (grants, filtered and paged, are grants/listing.py). None of them holds a secret
value or a token."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from broker_proxy.audit.errors import AuditError
from broker_proxy.audit.evidence import default_checkpoints, verify_evidence
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.time_source import utc_now


def policy_view(active: ActivePolicy, loaded_at: datetime | None,
                file_problem: str | None) -> dict[str, Any]:
    policy = active.policy
    webhook = policy.approval_webhook
    return {
        "source": policy.source, "digest": policy.digest,
        "loaded_at": loaded_at.isoformat().replace("+00:00", "Z") if loaded_at else None,
        "file_rejected": file_problem is not None, "problem": file_problem,
        "approval_timeout_s": policy.approval_timeout.total_seconds(),
        # A chat webhook's path is its secret: show where it goes, not the whole URL.
        "approval_webhook_host": urlsplit(webhook).hostname if webhook else None,
        "secrets": {name: {
            "from": secret.source, "placeholder": secret.placeholder,
            "inject": sorted(secret.inject), "per_request_approval": secret.per_request_approval,
            "destinations": [{"scheme": d.scheme, "host": d.host, "port": d.port,
                              "methods": sorted(d.methods), "paths": list(d.paths)}
                             for d in secret.destinations],
        } for name, secret in sorted(policy.secrets.items())},
        "agents": {name: {"secrets": sorted(agent.secrets),
                          "max_ttl_s": agent.max_ttl.total_seconds(),
                          "approval": sorted(agent.approval)}
                   for name, agent in sorted(policy.agents.items())},
        "egress_allow": list(policy.egress_allow),
        "allow_addresses": [str(network) for network in policy.allow_addresses],
    }


class ChainStatus:
    """The last `audit verify` result (run on demand: a large log takes a while) and the
    newest signed checkpoint."""

    def __init__(self, log: Path, key: Path, checkpoints: Path) -> None:
        self._log, self._key, self._checkpoints = log, key, checkpoints
        self._lock = threading.Lock()
        self._last: dict[str, Any] | None = None

    def verify(self) -> dict[str, Any]:
        with self._lock:  # one verification at a time; the others wait for its answer
            # The same verifier and verdict as `broker-proxy audit verify` on this home.
            checkpoints = default_checkpoints(self._checkpoints.parent, self._log)
            try:
                evidence = verify_evidence(self._log, self._key, checkpoints=checkpoints)
            except AuditError as error:
                self._last = {"ok": False, "records": 0, "files": 0, "checked_at": _now(),
                              "verdict": f"audit log cannot be verified: {error}",
                              "checkpoints": None, "first_bad": None}
                return self._last
            bad = next((r for r in evidence.chains if not r.ok), None)
            self._last = {
                "ok": evidence.ok, "records": evidence.records,
                "files": len(evidence.chains), "checked_at": _now(),
                "verdict": evidence.verdict, "checkpoints": evidence.checkpoints,
                "first_bad": None if bad is None else {
                    "path": bad.path, "line": bad.first_bad[0] if bad.first_bad else None,
                    "reason": bad.first_bad[2] if bad.first_bad else None},
            }
            return self._last

    def status(self) -> dict[str, Any]:
        return {"verify": self._last, "checkpoint": self._last_checkpoint()}

    def _last_checkpoint(self) -> dict[str, Any] | None:
        try:
            lines = self._checkpoints.read_bytes().splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            try:
                checkpoint = json.loads(line)
            except ValueError:
                continue
            if isinstance(checkpoint, dict):
                return {k: checkpoint.get(k) for k in ("count", "ts", "time", "last_hash")
                        if k in checkpoint}
        return None


def _now() -> str:
    return utc_now().isoformat().replace("+00:00", "Z")
