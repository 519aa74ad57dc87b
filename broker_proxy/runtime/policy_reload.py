"""Live policy reload: on SIGHUP and when the file changes, all or nothing.

A new policy is loaded and validated in full, its indexes built, and only then swapped in with
one attribute assignment (`Broker.decide` snapshots `broker.policy` once per request, so a
request sees either the old policy or the new one, never a mix). A policy that does not load is
logged on one line, counted, audited, and the last good one stays in force.

The parse and validation run in a child process (policy_worker.py), so a large policy does not
take the GIL, the collector and hundreds of megabytes from the proxy. The newest file wins: the
watcher keeps looking while the child works, kills it when the file changes under it and reads
the new content, and looks once more before the swap, so an answer for bytes that are no longer
on disk never serves.

After a good reload, grants the new policy no longer covers (their agent is gone or may no longer
hold one of their secrets) are revoked in the store. The broker already refuses them on the next
request; revoking makes that permanent, so putting the secret back later does not bring old
grants back to life. A reload only ever revokes: it never touches a revoked or denied grant.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_proxy.audit.log import AuditError
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.actions import change_grant
from broker_proxy.grants.model import Grant
from broker_proxy.grants.store import GrantError
from broker_proxy.policy.loader import (
    PolicyError,
    PolicyIssue,
    collector_paused,
    load_policy_bytes,
    read_policy_bytes,
)
from broker_proxy.policy.model import Policy
from broker_proxy.runtime import policy_worker
from broker_proxy.time_source import utc_now

log = logging.getLogger("broker_proxy.runtime.policy_reload")

POLL_INTERVAL = 1.0  # seconds between looks at the file


@dataclass(frozen=True, slots=True)
class ReloadResult:
    ok: bool
    digest: str | None  # the new policy's digest when ok
    revoked: tuple[str, ...] = ()  # grants the new policy no longer covers
    error: str | None = None  # the first problem, one line, when rejected


class PolicyReloader:
    """Watches one policy file for one broker; `start()` runs the watcher on a daemon thread."""

    def __init__(self, broker: Broker, path: Path, poll_interval: float = POLL_INTERVAL,
                 worker_command: list[str] | None = None) -> None:
        self._broker = broker
        self._worker_command = worker_command  # the loader child's argv; tests wrap it
        self._loading: int | None = None  # the loader child's pid while one runs
        self._path = Path(path)
        self._interval = poll_interval
        self._seen = _file_digest(self._path)  # the file the broker started with
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False
        self._stopping = False
        self.file_problem: str | None = None  # why the file on disk is rejected, while it is
        self._thread = threading.Thread(target=self._watch, name="policy-reload", daemon=True)

    def start(self) -> PolicyReloader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def request_reload(self) -> None:
        """For a signal handler: cheap and non-blocking; the watcher thread does the work."""
        self._forced = True
        self._wake.set()

    def check(self) -> ReloadResult | None:
        """Reload if the file's content changed since the last look (good or bad)."""
        digest = _file_digest(self._path)
        if digest is None or digest == self._seen:
            return None
        return self.reload("file_changed")

    def reload(self, trigger: str) -> ReloadResult:
        with self._lock:  # a SIGHUP and a file change at once still reload one at a time
            while True:
                try:
                    data = read_policy_bytes(self._path)
                except PolicyError as error:
                    self._seen = None
                    return self._reject(trigger, error)
                digest = hashlib.sha256(data).hexdigest()
                self._seen = digest
                try:
                    candidate = self._load(data, digest)
                except PolicyError as error:
                    return self._reject(trigger, error)
                except _Superseded:
                    if self._stopping:
                        return ReloadResult(False, None, error="stopped while loading")
                    # The newest file wins: what was being read is out of date, read that.
                    self._broker.metrics.policy_reloads.labels("superseded").inc()
                    log.warning("policy reload (%s): %s changed while it was being read; "
                                "reading the new content instead", trigger, self._path)
                    trigger = "file_changed"
                    continue
                return self._swap(trigger, candidate)

    def _swap(self, trigger: str, candidate: ActivePolicy) -> ReloadResult:
        self._broker.policy = candidate  # the atomic swap
        self._broker.metrics.policy_reloads.labels("ok").inc()
        self.file_problem = None
        self._broker.metrics.policy_file_rejected.set(0)
        revoked = self._revoke_uncovered(candidate.policy)
        self._audit("policy_reloaded", decision="allow", reason=trigger,
                    policy=candidate.policy.digest, revoked_grants=len(revoked))
        log.warning("policy reloaded (%s): %s, sha256 %s%s", trigger, self._path,
                    candidate.policy.digest[:12],
                    f", {len(revoked)} grant(s) outside it revoked" if revoked else "")
        return ReloadResult(True, candidate.policy.digest, revoked)

    def _load(self, data: bytes, digest: str) -> ActivePolicy:
        """The policy of ``data`` ready to serve; _Superseded once the file holds other bytes.

        Parsed and validated in a child process (policy_worker.py says why); only rebuilding
        the model from the child's answer and the request indexes happens here, on this thread,
        with the collector paused. Where no child can be started, it loads here as before.
        """
        try:
            child = policy_worker.start(str(self._path), data, self._worker_command)
        except OSError as error:
            log.error("policy reload: cannot start the loader process (%s); loading in the "
                      "proxy", type(error).__name__)
            with collector_paused():
                return ActivePolicy.build(load_policy_bytes(data, str(self._path)))
        self._loading = child.pid
        try:
            output, errors = self._wait_for(child, digest)
        finally:
            self._loading = None
        with _gil_handed_over_often():
            try:
                policy = policy_worker.read_answer(output, str(self._path), child.returncode,
                                                   errors)
            except policy_worker.WorkerFailed as error:
                raise PolicyError([PolicyIssue(str(self._path), 0, 0, "policy",
                                               f"cannot load: {error}")]) from None
            self._raise_if_superseded(digest)
            with collector_paused():
                candidate = ActivePolicy.build(policy)
        # The last look before the swap: an answer for bytes no longer on disk never serves.
        self._raise_if_superseded(digest)
        return candidate

    def _wait_for(self, child: subprocess.Popen[bytes], digest: str) -> tuple[bytes, bytes]:
        """The child's output; it is killed (and _Superseded raised) when the file changes."""
        while True:
            try:
                return child.communicate(timeout=self._interval)
            except subprocess.TimeoutExpired:
                pass  # communicate() goes on where it was, output kept
            try:
                if self._stopping:
                    raise _Superseded()
                self._raise_if_superseded(digest)
            except _Superseded:
                child.kill()
                child.communicate()
                raise

    def _raise_if_superseded(self, digest: str) -> None:
        now = _file_digest(self._path)
        if now is not None and now != digest:
            raise _Superseded()

    def _reject(self, trigger: str, error: PolicyError) -> ReloadResult:
        self._broker.metrics.policy_reloads.labels("rejected").inc()
        first = str(error.issues[0]) if error.issues else str(error)
        first = " ".join(first.split())
        more = len(error.issues) - 1
        self.file_problem = first
        self._broker.metrics.policy_file_rejected.set(1)
        # Only the count goes into the audit record: the file's text is not ours to archive.
        self._audit("policy_reload_rejected", decision="deny", reason="invalid_policy",
                    errors=len(error.issues))
        log.error("policy reload rejected (%s), keeping the last good policy: %s%s", trigger,
                  first, f" (and {more} more)" if more > 0 else "")
        return ReloadResult(False, None, error=first)

    def _revoke_uncovered(self, policy: Policy) -> tuple[str, ...]:
        revoked = []
        now = utc_now()
        try:
            live = self._broker.grants.list(include_inactive=False, now=now)
        except GrantError as error:
            # The broker still refuses these per request; only the permanent revocation waits.
            log.error("policy reload: cannot list grants to revoke: %s", type(error).__name__)
            return ()
        for grant in live:
            if _covered(grant, policy):
                continue
            try:
                change_grant(self._broker.grants, self._broker.audit, grant.id, "revoke",
                             by="policy-reload", now=now, reason="outside_policy")
            except (GrantError, AuditError) as error:
                log.error("policy reload: cannot revoke grant %s: %s", grant.id,
                          type(error).__name__)
                continue
            revoked.append(grant.id)  # counted by the grant watcher, like every revocation
        return tuple(revoked)

    def _audit(self, event: str, **fields: Any) -> None:
        try:
            self._broker.audit.append(event, **fields)
        except AuditError:
            self._broker.metrics.audit_write_errors.inc()

    def _watch(self) -> None:
        while not self._stopping:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._stopping:
                return
            try:
                if self._forced:
                    self._forced = False
                    self.reload("sighup")
                else:
                    self.check()
            except Exception as error:  # the watcher must outlive any one bad reload
                log.error("policy reload failed: %s", type(error).__name__)


# While this thread rebuilds a large model, the event loop waits for the GIL each time it wakes;
# by default up to 5 ms (sys.getswitchinterval), several times per request.
RELOAD_SWITCH_INTERVAL = 0.0005


@contextmanager
def _gil_handed_over_often() -> Iterator[None]:
    """Hand the GIL over every 0.5 ms while a reload works in this process, then as before.

    Process-wide, like the GIL itself; reloads are serialised by the reloader's lock, so two
    never interleave their restores.
    """
    before = sys.getswitchinterval()
    sys.setswitchinterval(min(before, RELOAD_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(before)


class _Superseded(Exception):
    """The file changed while its previous content was loading: that load is abandoned."""


def _covered(grant: Grant, policy: Policy) -> bool:
    agent = policy.agents.get(grant.agent)
    return agent is not None and all(
        name in agent.secrets and name in policy.secrets for name in grant.secrets)


def _file_digest(path: Path) -> str | None:
    """The content's sha256: catches edits that keep the size and mtime, and ignores touches."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
