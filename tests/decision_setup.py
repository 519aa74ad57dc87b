"""The decision tests' broker on real parts: SQLite grants, the audit log, env and vault secrets.

One policy, one ``Setup`` and one ``setup`` fixture for every test that drives ``Broker.decide``
(the decision tests, the addon's fail-closed tests, the policy fuzzers, replays, scrubbing); the
request builders and the denial check go with them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.broker import Broker
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import load_policy_text
from broker_proxy.request.outbound import Denied, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.master_keys import random_master_key

API = "api.example.com"
VAULT_HOST = "vault.example.com"
PLAIN_HOST = "plain.example.com"
EVIL = "evil.example.com"
EGRESS = "pypi.org"
VAULT_PLACEHOLDER = "vk-PLACEHOLDER-0000"

POLICY = f"""\
version: 1
secrets:
  api_key:
    from: env:BP_TEST_API_KEY
    destinations:
      - host: {API}
        methods: [GET, POST]
        paths: ["/v1/**"]
      - host: {PLAIN_HOST}
        port: 80
        scheme: http
    inject: [header, query, body]
  vault_key:
    from: vault
    placeholder: "{VAULT_PLACEHOLDER}"
    destinations:
      - host: {VAULT_HOST}
  header_only:
    from: env:BP_TEST_HEADER_ONLY
    destinations:
      - host: {API}
  spare:
    from: env:BP_TEST_SPARE
    destinations:
      - host: {API}
agents:
  bot:
    secrets: [api_key, vault_key, header_only, spare]
    max_ttl: 1h
  careful:
    secrets: [api_key]
    max_ttl: 1h
    approval: [api_key]
egress:
  allow: [{EGRESS}]
"""
# The same policy after ops removed api_key from the bot's secrets.
SHRUNK_POLICY = POLICY.replace("secrets: [api_key, vault_key, header_only, spare]",
                               "secrets: [vault_key, header_only, spare]")


@dataclass
class Setup:
    home: Home
    broker: Broker
    store: SqliteGrantStore
    values: dict[str, str]

    def issue(self, *names: str, agent: str = "bot", max_uses: int | None = None,
              ttl: timedelta | None = None) -> IssuedGrant:
        return issue_grant(self.broker.policy.policy, self.store, agent=agent, task="unit test",
                           secrets=list(names or ["api_key"]), ttl=ttl, max_uses=max_uses,
                           now=utc_now())

    def uses(self, grant: IssuedGrant) -> int:
        stored = self.store.get(grant.grant.id)
        assert stored is not None
        return stored.uses

    def records(self) -> list[dict]:
        return list(AuditLog.read_records(self.home.audit_log))

    def requests_total(self, decision: str, reason: str) -> float:
        value = self.broker.metrics.registry.get_sample_value(
            "broker_requests_total", {"decision": decision, "reason": reason})
        return value or 0.0

    def assert_no_secret_in(self, data: bytes | str) -> None:
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        for value in self.values.values():
            assert value not in text, "a secret value leaked"


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    values = {
        "api_key": "sk-" + secrets.token_urlsafe(24),
        "header_only": "ho-" + secrets.token_urlsafe(24),
        "spare": "sp-" + secrets.token_urlsafe(24),
        "vault_key": "vk-" + secrets.token_urlsafe(24),
    }
    monkeypatch.setenv("BP_TEST_API_KEY", values["api_key"])
    monkeypatch.setenv("BP_TEST_HEADER_ONLY", values["header_only"])
    monkeypatch.setenv("BP_TEST_SPARE", values["spare"])
    monkeypatch.setenv("BROKER_PROXY_MASTER_KEY", random_master_key())
    home = Home(tmp_path / "home").ensure()
    Vault(home.vault, load_or_create_master_key(home, create=True)).set(
        "vault_key", values["vault_key"])
    store = SqliteGrantStore(home.grants_db)
    audit = AuditLog.open(home.audit_log, home.audit_key)
    broker = Broker(policy=ActivePolicy.build(load_policy_text(POLICY)), grants=store,
                    secrets=SecretResolver(home), audit=audit, metrics=BrokerMetrics())
    ready = Setup(home, broker, store, values)
    yield ready
    # Invariant 1 (docs/ARCHITECTURE.md): nothing the broker wrote holds a secret value.
    audit.close()
    ready.assert_no_secret_in(home.audit_log.read_bytes())
    store.close()


def request(*, method: str = "GET", scheme: str = "https", host: str = API, port: int = 443,
            path: str = "/v1/things", query: str = "",
            headers: tuple[tuple[str, str], ...] = (), body: bytes = b"",
            host_header: str | None = None, authority: str | None = None,
            sni: str | None = None) -> OutboundRequest:
    return OutboundRequest(method=method, scheme=scheme, host=host, port=port, path=path,
                           query=query, headers=headers, body=body, host_header=host_header,
                           authority=authority, sni=sni)


def bearer(placeholder: str = "{{secret:api_key}}") -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {placeholder}"),)


def denied(verdict: object, status: int, error: str) -> Denied:
    assert isinstance(verdict, Denied), f"expected a denial, got {verdict!r}"
    assert (verdict.status, verdict.error) == (status, error)
    body = json.loads(verdict.body())
    assert set(body) == {"error", "grant", "message"}
    assert body["error"] == error
    return verdict
