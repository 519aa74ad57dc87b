"""A Broker like the proxy's, on throwaway parts, for deciding requests that never leave.

`policy test` and `policy replay` must answer with the proxy's own decision code, not a second
reading of the policy: so this builds a real ``Broker`` around the policy with a grant store and
an audit log in a temporary directory, and secret values that are random per run. Nothing here
dials out: the fake secrets need no backend, OAuth2 tokens are not minted, nothing is forwarded.
"""

from __future__ import annotations

import base64
import json
import secrets
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.issuer import GrantPolicyError, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.model import Policy, SecretPolicy
from broker_proxy.request.codes import GRANT_OUTSIDE_POLICY
from broker_proxy.request.outbound import Denied, OutboundRequest, Verdict
from broker_proxy.secrets.value import SecretValue
from broker_proxy.time_source import utc_now

_AWS_KEY_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


class FakeSecrets:
    """Random values per secret name, drawn once per run: never read from a real backend.

    They are never printed; a test only learns whether a secret was injected, not its value.
    A ``sign: aws-sigv4`` secret gets credentials in the JSON shape the re-signer reads.
    """

    def __init__(self) -> None:
        self._values: dict[str, SecretValue] = {}

    def resolve(self, secret: SecretPolicy) -> SecretValue:
        value = self._values.get(secret.name)
        if value is None:
            text = "fake-" + secrets.token_urlsafe(24)
            if secret.sign is not None:
                text = json.dumps({
                    "access_key_id": "AKIA" + "".join(
                        secrets.choice(_AWS_KEY_ALPHABET) for _ in range(16)),
                    "secret_access_key": secrets.token_urlsafe(30),
                })
            value = self._values[secret.name] = SecretValue(secret.name, text)
        return value

    stored_value = resolve  # nothing is minted from a fake: what is stored is what is sent

    def minted_token(self, secret: SecretPolicy) -> SecretValue | None:
        return None

    def retired_values(self, secret: SecretPolicy) -> tuple[SecretValue, ...]:
        return ()

    def upstream_answered(self, status: int, scrub: Mapping[str, tuple[str, str]]) -> None:
        return None


@dataclass(frozen=True, slots=True)
class TestGrant:
    """A grant issued on the throwaway store: its token and its placeholders."""

    token: str
    placeholders: dict[str, str]  # secret name -> what the agent would send


class DecisionHarness:
    """``decide(agent, grant_secrets, request)`` answered by a real ``Broker.decide``."""

    def __init__(self, policy: Policy, workdir: Path) -> None:
        self.policy = policy
        self.store = SqliteGrantStore(workdir / "grants.sqlite3")
        self.audit = AuditLog.open(workdir / "audit.log", workdir / "audit.key")
        self.broker = Broker(policy=ActivePolicy.build(policy), grants=self.store,
                             secrets=FakeSecrets(), audit=self.audit,
                             metrics=BrokerMetrics())
        # Nobody decides here: a request that needs a person is answered at once (as before
        # held requests lived in the grant store), not queued in the throwaway store.
        self.broker.approvals.accepting = False
        self._grants: dict[tuple[str, tuple[str, ...], bool], TestGrant | Denied] = {}

    def close(self) -> None:
        self.audit.close()
        self.store.close()

    def grant(self, agent: str, grant_secrets: tuple[str, ...] | None = None,
              approved: bool = True) -> TestGrant | Denied:
        """A grant for ``agent`` holding ``grant_secrets`` (default: every secret it may hold).

        A grant the policy would not issue is the refusal the proxy gives a grant the policy no
        longer covers, ``grant_outside_policy``: the request could not be made under this policy.
        """
        agent_policy = self.policy.agents.get(agent)
        if grant_secrets is None:
            grant_secrets = tuple(sorted(agent_policy.secrets)) if agent_policy else ()
        key = (agent, tuple(sorted(set(grant_secrets))), approved)
        found = self._grants.get(key)
        if found is None:
            found = self._grants[key] = self._issue(agent, key[1], approved)
        return found

    def _issue(self, agent: str, names: tuple[str, ...], approved: bool) -> TestGrant | Denied:
        now = utc_now()
        agent_policy = self.policy.agents.get(agent)
        try:
            issued = issue_grant(self.policy, self.store, agent=agent, task="policy test",
                                 secrets=names, ttl=agent_policy.max_ttl if agent_policy else None,
                                 max_uses=None, now=now)
        except GrantPolicyError as error:
            return Denied(403, GRANT_OUTSIDE_POLICY, str(error))
        if approved and str(issued.grant.status) == "pending":
            self.store.approve(issued.grant.id, "policy-test", now)
        placeholders = {name: issued.placeholders.get(name) or self.policy.secrets[name].placeholder
                        for name in names}
        return TestGrant(issued.token, placeholders)

    def decide(self, grant: TestGrant, request: OutboundRequest) -> Verdict:
        # Deferred durability: the record is written to the throwaway log but not fsynced, which
        # a request that never leaves does not need.
        return self.broker.decide(grant.token, request, defer_durability=True)


@contextmanager
def throwaway_harness(policy: Policy) -> Iterator[DecisionHarness]:
    """A harness whose store, audit log and keys are deleted when the block ends."""
    with tempfile.TemporaryDirectory(prefix="broker-proxy-policy-") as workdir:
        harness = DecisionHarness(policy, Path(workdir))
        try:
            yield harness
        finally:
            harness.close()


def basic_credentials(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def amz_date(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
