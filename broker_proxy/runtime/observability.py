"""What `broker-proxy run` adds around the audit log and metrics: counting records, rotation,
the grant watcher (expiry records, grant gauges) and signed checkpoints.

Kept out of the CLI module so `run` needs one line to start it and one to stop it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from broker_proxy.audit.checkpoint import CheckpointPaths, CheckpointWriter, load_signing_key
from broker_proxy.audit.log import AuditError
from broker_proxy.decision.broker import Broker
from broker_proxy.home import Home
from broker_proxy.runtime.grant_watch import GrantWatcher


@dataclass(slots=True)
class Observability:
    watcher: GrantWatcher
    checkpoints: CheckpointWriter | None

    def stop(self) -> None:
        self.watcher.stop()
        if self.checkpoints is not None:
            self.checkpoints.stop()

    def checkpoint_problem(self) -> str | None:
        """Why checkpoints miss a place they should reach (a copy), for /readyz."""
        return self.checkpoints.problem() if self.checkpoints is not None else None


def start_observability(broker: Broker, home: Home, *, audit_max_bytes: int | None,
                        checkpoint_every: float | None, checkpoint_records: int | None = None,
                        checkpoint_copies: tuple[Path, ...] = (),
                        grant_retention: timedelta | None = None) -> Observability:
    """Raises CheckpointError (key) or ValueError (too small a size) before starting anything."""
    broker.audit.rotate_at(audit_max_bytes)
    key = None
    paths = CheckpointPaths.in_home(home.root)
    if checkpoint_every:
        key = load_signing_key(paths, create=True)
    broker.audit.add_observer(broker.metrics.audit_records.inc)
    broker.metrics.scrape_hooks.append(
        lambda: broker.metrics.audit_log_unusable.set(broker.audit.problem() is not None))
    try:
        broker.audit.append("policy_loaded", decision="allow", reason="startup",
                            policy=broker.policy.policy.digest)
    except AuditError:
        broker.metrics.audit_write_errors.inc()
    watcher = GrantWatcher(broker.grants, broker.audit, broker.metrics,
                           retention=grant_retention).start()
    checkpoints = None
    if key is not None and checkpoint_every:
        checkpoints = CheckpointWriter(
            broker.audit, key, paths.file, checkpoint_every, records=checkpoint_records,
            copies=checkpoint_copies,
            on_copy_failure=broker.metrics.audit_checkpoint_copy_failures.inc).start()
        writer = checkpoints
        broker.metrics.scrape_hooks.append(
            lambda: broker.metrics.audit_checkpoint_copy_failing.set(writer.problem() is not None))
    return Observability(watcher, checkpoints)
