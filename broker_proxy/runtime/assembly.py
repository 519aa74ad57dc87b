"""Putting a broker together from a home directory and a policy file.

Shared by `broker-proxy run` and the `mitmdump -s` entry point so both start the same way and
refuse to start for the same reasons.
"""

from __future__ import annotations

from pathlib import Path

from broker_proxy.audit.checkpoint import CheckpointPaths, latest_checkpoint
from broker_proxy.audit.errors import AuditTamperedError
from broker_proxy.audit.head import head_path
from broker_proxy.audit.log import AuditLog
from broker_proxy.audit.recover import holds
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.factory import open_grant_store
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import collector_paused
from broker_proxy.runtime.policy_worker import load_at_start
from broker_proxy.runtime.replica import replica_id
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.credentials import CredentialResolver
from broker_proxy.secrets.oauth2 import TokenMinter, UpstreamTrust


def open_audit(home: Home) -> AuditLog:
    """The home's log, refused when it lost records its writer had written.

    The head state (audit.log.head) says what was written; without one (a home from before
    head states, or one deleted together with a cut), the newest signed checkpoint is the
    anchor: a log that does not hold it is not adopted (a full read, only in that case).
    """
    log = home.audit_log
    paths = CheckpointPaths.in_home(home.root)
    if not head_path(log).exists() and log.exists() and paths.file.exists():
        newest = latest_checkpoint(paths.file, paths.public, log)
        if newest is not None and not holds(log, home.audit_key, *newest):
            raise AuditTamperedError(
                f"audit log {log} has no head state and does not hold the newest signed "
                f"checkpoint ({newest[0]} records, {paths.file.name}); check it with "
                "`broker-proxy audit verify`, then run `broker-proxy audit recover` to "
                "record the gap and start")
    return AuditLog.open(log, home.audit_key)


def open_broker(home: Home, policy_file: Path, *, store: str | None = None,
                replica: str | None = None, trust: UpstreamTrust | None = None) -> Broker:
    """``store`` is the grant store's URL as RunConfig resolved it (None: the home's SQLite).

    Raises the loader's PolicyError, GrantStoreError or an audit error: never half-starts.

    ``trust`` is what the proxy trusts upstream (--upstream-ca, --resolve): the OAuth2 token
    endpoints are called with the same trust as the upstreams themselves.
    """
    with collector_paused():
        policy = ActivePolicy.build(load_at_start(policy_file))
    home.ensure()
    grants = open_grant_store(home, store)  # RunConfig.store: --store, $BROKER_PROXY_STORE
    audit = open_audit(home)
    # One chain per replica, each record naming it (see README, "Several replicas").
    audit.stamp_records(replica=replica_id(home, replica))
    metrics = BrokerMetrics()
    metrics.policy_reloads.labels("ok").inc()
    return Broker(
        policy=policy,
        grants=grants,
        secrets=CredentialResolver(SecretResolver(home, base_dir=policy_file.parent),
                                   TokenMinter(trust)),
        audit=audit,
        metrics=metrics,
    )
