"""Header templates, Basic credentials, per-grant placeholders and command caching.

Policy parsing, the scanner and Broker.decide on real parts: SQLite grants, the audit log, env
secrets. The proxy-level versions of these are in test_e2e_credential_kinds.py.
"""

import base64
import json
import secrets
import sqlite3
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.basic_credentials import encode_basic, parse_basic
from broker_proxy.decision.broker import Broker
from broker_proxy.decision.placeholders import PlaceholderScanner
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SCHEMA_VERSION, SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.model import HeaderTemplate, PlaceholderFormat
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest
from broker_proxy.secrets.backends import SecretResolver, SecretUnavailable
from broker_proxy.time_source import utc_now
from tests.decision_setup import Setup

API = "api.example.com"
EVIL = "evil.example.com"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

POLICY = f"""\
version: 1
secrets:
  templated:
    from: env:BP_T_TEMPLATED
    destinations: [{{host: {API}, paths: ["/v1/**"]}}]
    inject:
      - {{header: Authorization, value: "Bearer {{secret}}"}}
  forced:
    from: env:BP_T_FORCED
    destinations: [{{host: forced.example.com}}]
    inject:
      - header
      - {{header: X-Api-Key, value: "{{secret}}", overwrite: true}}
  basic_pw:
    from: env:BP_T_BASIC
    basic: {{username: robot}}
    destinations: [{{host: {API}, paths: ["/basic/**"]}}]
  basic_templated:
    from: env:BP_T_BASIC2
    basic: {{username: robot2}}
    destinations: [{{host: basic.example.com}}]
    inject: [{{header: Authorization, value: "Basic {{basic}}"}}]
  plain:
    from: env:BP_T_PLAIN
    destinations: [{{host: {API}}}]
  shaped:
    from: env:BP_T_SHAPED
    placeholder_format: {{prefix: "sk-bp-", length: 32}}
    destinations: [{{host: shaped.example.com}}]
agents:
  bot:
    secrets: [templated, forced, basic_pw, basic_templated, plain, shaped]
"""


def load(text: str):
    return load_policy_text(textwrap.dedent(text), "policy.yaml")


def problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        load(text)
    return [str(issue) for issue in caught.value.issues]


def secret_yaml(body: str) -> str:
    return ("version: 1\nsecrets:\n  s:\n    from: env:X\n    destinations: [{host: a.example}]\n"
            + textwrap.indent(textwrap.dedent(body), "    "))


# --- the policy --------------------------------------------------------------------------------


def test_inject_mixes_places_and_header_templates():
    policy = load(POLICY)
    forced = policy.secrets["forced"]
    assert forced.inject == {"header"}
    assert forced.templates == (HeaderTemplate("X-Api-Key", "{secret}", overwrite=True),)
    assert policy.secrets["templated"].templates[0].overwrite is False


def test_basic_secret_may_be_swapped_in_basic_credentials_only_when_the_policy_says_so():
    policy = load(POLICY)
    assert policy.secrets["basic_pw"].basic_username == "robot"
    assert "basic" in policy.secrets["basic_pw"].inject
    assert "basic" not in policy.secrets["plain"].inject


def test_placeholder_format_defaults_to_letters_and_digits():
    shape = load(POLICY).secrets["shaped"].placeholder_format
    assert shape == PlaceholderFormat("sk-bp-", ALPHABET, 32)


@pytest.mark.parametrize(("body", "message"), [
    ("inject: [{header: Host, value: '{secret}'}]",
     "secrets.s.inject[0].header: the proxy never sets Host"),
    ("inject: [{header: X-Key, value: 'no slot'}]",
     'secrets.s.inject[0].value: must hold "{secret}"'),
    ("inject: [{header: X-Key, value: '{secret}{secret}'}]",
     'secrets.s.inject[0].value: must hold "{secret}"'),
    ("inject: [{header: 'Bad Name', value: '{secret}'}]",
     "secrets.s.inject[0].header: invalid header name"),
    ("inject: [{header: X-Key, value: '{secret}', overwrite: 'yes'}]",
     "secrets.s.inject[0].overwrite: expected true or false"),
    ("inject: [{header: X-Key, value: '{secret}', extra: 1}]",
     'secrets.s.inject[0].extra: unknown field "extra"'),
    ("inject: [{header: Authorization, value: 'Basic {basic}'}]",
     'secrets.s.inject: a "{basic}" template needs basic'),
    ("basic: {username: 'a:b'}", "secrets.s.basic.username: must be 1 to"),
    ("placeholder_format: {prefix: sk-, length: 8}",
     "secrets.s.placeholder_format.length: 8 characters of a 62-character alphabet give 48"),
    ("placeholder_format: {prefix: s, length: 40}",
     "secrets.s.placeholder_format.prefix: must be 2 to 32"),
    ("placeholder_format: {prefix: sk-, length: 40, alphabet: aab}",
     "secrets.s.placeholder_format.alphabet: must be at least 2 distinct"),
    ("placeholder: sk-fixed-000\nplaceholder_format: {prefix: sk-, length: 40}",
     "secrets.s.placeholder_format: use either placeholder or placeholder_format"),
    ("cache_ttl: 5m", "secrets.s.cache_ttl: only used with from: command or keyring"),
    ("timeout: 5s", 'secrets.s.timeout: only used with "from: command"'),
])
def test_bad_credential_fields_are_reported_with_their_place(body, message):
    found = problems(secret_yaml(body))
    assert any(message in line for line in found), found


def test_command_timeout_and_cache_ttl_are_read():
    policy = load("""\
        version: 1
        secrets:
          s:
            from: command
            command: [pass, show, s]
            timeout: 2s
            cache_ttl: 5m
            destinations: [{host: a.example}]
        """)
    secret = policy.secrets["s"]
    assert (secret.timeout.total_seconds(), secret.cache_ttl.total_seconds()) == (2, 300)


# --- the scanner and Basic ---------------------------------------------------------------------


def test_per_grant_placeholder_names_its_secret_only_in_its_own_grant():
    shape = PlaceholderFormat("sk-bp-", ALPHABET, 32)
    scanner = PlaceholderScanner({"shaped": "{{secret:shaped}}"}, {"shaped": shape})
    mine = "sk-bp-" + "A" * 32
    theirs = "sk-bp-" + "B" * 32
    bound = scanner.for_grant({"shaped": mine})
    assert [hit.secret for hit in bound.find(f"Bearer {mine}")] == ["shaped"]
    # Another grant's placeholder is still found, but names nothing: refused like an unknown.
    assert [hit.secret for hit in bound.find(f"Bearer {theirs}")] == [None]
    # A longer token of the same alphabet is something else.
    assert bound.find(mine + "x") == []


def test_basic_credentials_round_trip():
    header = encode_basic("robot", "pä:ss")
    assert parse_basic(header) == ("robot", "pä:ss")
    assert parse_basic("Basic !!notbase64") is None
    assert parse_basic("Bearer " + base64.b64encode(b"a:b").decode()) is None


# --- Broker.decide -----------------------------------------------------------------------------


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    variables = {"templated": "BP_T_TEMPLATED", "forced": "BP_T_FORCED",
                 "basic_pw": "BP_T_BASIC", "basic_templated": "BP_T_BASIC2",
                 "plain": "BP_T_PLAIN", "shaped": "BP_T_SHAPED"}
    values = {name: secrets.token_urlsafe(24) for name in variables}
    for name, variable in variables.items():
        monkeypatch.setenv(variable, values[name])
    home = Home(tmp_path / "home").ensure()
    store = SqliteGrantStore(home.grants_db)
    audit = AuditLog.open(home.audit_log, home.audit_key)
    broker = Broker(policy=ActivePolicy.build(load_policy_text(POLICY)), grants=store,
                    secrets=SecretResolver(home), audit=audit, metrics=BrokerMetrics())
    yield Setup(home, broker, store, values)
    audit.close()
    written = home.audit_log.read_text()
    assert not any(value in written for value in values.values())
    store.close()


def request(*, host: str = API, path: str = "/v1/things", method: str = "GET",
            headers: tuple[tuple[str, str], ...] = ()) -> OutboundRequest:
    return OutboundRequest(method=method, scheme="https", host=host, port=443, path=path,
                           query="", headers=headers, body=b"", host_header=None,
                           authority=None, sni=None)


def allowed(verdict: object) -> Allowed:
    assert isinstance(verdict, Allowed), f"expected an allow, got {verdict!r}"
    return verdict


def denied(verdict: object, status: int, error: str) -> Denied:
    assert isinstance(verdict, Denied), f"expected a denial, got {verdict!r}"
    assert (verdict.status, verdict.error) == (status, error)
    return verdict


def header(verdict: Allowed, name: str) -> list[str]:
    assert verdict.headers is not None
    return [value for key, value in verdict.headers if key.lower() == name.lower()]


def test_template_sets_the_header_without_any_placeholder_and_counts_a_use(setup):
    issued = setup.issue("templated")
    verdict = allowed(setup.broker.decide(issued.token, request(
        headers=(("Accept", "application/json"),))))
    assert header(verdict, "Authorization") == [f"Bearer {setup.values['templated']}"]
    assert verdict.injected == ("templated",)
    assert setup.uses(issued) == 1
    (record,) = [r for r in setup.records() if r["reason"] == codes.INJECTED]
    assert record["secrets"] == ["templated"]


def test_template_is_not_applied_outside_its_destination_or_grant(setup):
    issued = setup.issue("templated")
    outside_path = allowed(setup.broker.decide(issued.token, request(path="/v2/x")))
    assert outside_path.headers is None and outside_path.injected == ()
    other = setup.issue("plain")  # covers the host, does not hold the templated secret
    verdict = allowed(setup.broker.decide(other.token, request()))
    assert verdict.headers is None and verdict.injected == ()
    assert setup.uses(issued) == setup.uses(other) == 0


def test_header_the_agent_sent_is_refused_unless_the_template_overwrites(setup):
    issued = setup.issue("templated")
    verdict = denied(setup.broker.decide(issued.token, request(
        headers=(("authorization", "Bearer agent-own-token"),))), 403, codes.HEADER_ALREADY_SET)
    assert "Authorization" in verdict.message
    assert setup.uses(issued) == 0


def test_overwrite_replaces_every_copy_of_the_agent_header(setup):
    issued = setup.issue("forced")
    verdict = allowed(setup.broker.decide(issued.token, request(
        host="forced.example.com", headers=(("X-Api-Key", "mine"), ("x-api-key", "again")))))
    assert header(verdict, "X-Api-Key") == [setup.values["forced"]]


def test_placeholder_in_basic_password_is_swapped_with_the_policy_username(setup):
    issued = setup.issue("basic_pw")
    sent = encode_basic("whoever", "{{secret:basic_pw}}")
    verdict = allowed(setup.broker.decide(issued.token, request(
        path="/basic/login", headers=(("Authorization", sent),))))
    assert header(verdict, "Authorization") == [encode_basic("robot", setup.values["basic_pw"])]
    assert setup.uses(issued) == 1


def test_basic_credentials_of_a_secret_without_basic_are_still_refused(setup):
    issued = setup.issue("plain")
    sent = encode_basic("robot", "{{secret:plain}}")
    denied(setup.broker.decide(issued.token, request(headers=(("Authorization", sent),))),
           403, codes.PLACEHOLDER_NOT_ALLOWED_HERE)


def test_basic_with_placeholder_in_the_user_part_is_refused(setup):
    issued = setup.issue("basic_pw")
    sent = encode_basic("{{secret:basic_pw}}", "x")
    denied(setup.broker.decide(issued.token, request(
        path="/basic/login", headers=(("Authorization", sent),))),
        403, codes.PLACEHOLDER_NOT_ALLOWED_HERE)


def test_basic_template_sends_user_and_password(setup):
    issued = setup.issue("basic_templated")
    verdict = allowed(setup.broker.decide(issued.token, request(host="basic.example.com")))
    assert header(verdict, "Authorization") == [
        encode_basic("robot2", setup.values["basic_templated"])]


def test_each_grant_gets_its_own_placeholder_in_the_format(setup):
    first, second = setup.issue("shaped"), setup.issue("shaped")
    mine, theirs = first.placeholders["shaped"], second.placeholders["shaped"]
    assert mine != theirs
    for placeholder in (mine, theirs):
        assert placeholder.startswith("sk-bp-") and len(placeholder) == len("sk-bp-") + 32
        assert set(placeholder.removeprefix("sk-bp-")) <= set(ALPHABET)
    assert setup.store.get(first.grant.id).placeholder_of("shaped") == mine
    verdict = allowed(setup.broker.decide(first.token, request(
        host="shaped.example.com", headers=(("Authorization", f"Bearer {mine}"),))))
    assert header(verdict, "Authorization") == [f"Bearer {setup.values['shaped']}"]
    assert verdict.scrub["shaped"][1] == mine


def test_another_grants_placeholder_is_refused_like_an_unknown_secret(setup):
    first, second = setup.issue("shaped"), setup.issue("shaped")
    theirs = second.placeholders["shaped"]
    borrowed = denied(setup.broker.decide(first.token, request(
        host="shaped.example.com", headers=(("Authorization", f"Bearer {theirs}"),))),
        403, codes.SECRET_NOT_GRANTED)
    unknown = denied(setup.broker.decide(first.token, request(
        host="shaped.example.com", headers=(("Authorization", "Bearer {{secret:nope}}"),))),
        403, codes.SECRET_NOT_GRANTED)
    assert json.loads(borrowed.body()) == json.loads(unknown.body())
    assert setup.uses(first) == 0


# --- the grant store migration -----------------------------------------------------------------


def test_version_1_grant_store_is_migrated_and_keeps_its_grants(tmp_path: Path, setup):
    issued = setup.issue("plain")
    path = tmp_path / "old.db"
    with sqlite3.connect(setup.home.grants_db) as source, sqlite3.connect(path) as old:
        # Rebuild the version 1 table as an older broker-proxy wrote it.
        old.execute("CREATE TABLE grants (id TEXT PRIMARY KEY, agent TEXT NOT NULL, task TEXT"
                    " NOT NULL, secrets TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at"
                    " INTEGER NOT NULL, max_uses INTEGER, uses INTEGER NOT NULL DEFAULT 0,"
                    " status TEXT NOT NULL, approved_by TEXT, approved_at INTEGER, revoked_at"
                    " INTEGER, token_hash BLOB NOT NULL) STRICT")
        row = source.execute("SELECT id, agent, task, secrets, created_at, expires_at, max_uses,"
                             " uses, status, approved_by, approved_at, revoked_at, token_hash"
                             " FROM grants").fetchone()
        old.execute("INSERT INTO grants VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        old.execute("PRAGMA user_version = 1")
    with SqliteGrantStore(path) as migrated:
        grant = migrated.get(issued.grant.id)
        live = migrated.list(include_inactive=False)  # read through the newest schema's index
    assert grant is not None and grant.placeholders == () and grant.agent == "bot"
    assert [g.id for g in live] == [issued.grant.id]
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


@pytest.fixture(params=["sqlite", "redis"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path):
    if request.param == "sqlite":
        with SqliteGrantStore(tmp_path / "grants.db") as opened:
            yield opened
        return
    with RedisGrantStore(request.getfixturevalue("redis_server").url) as opened:
        yield opened


def test_per_grant_placeholders_survive_every_store(any_store):
    policy = load_policy_text(POLICY)
    issued = issue_grant(policy, any_store, agent="bot", task="store", ttl=None,
                         secrets=["plain", "shaped"], max_uses=None, now=utc_now())
    assert [name for name, _ in issued.grant.placeholders] == ["shaped"]
    assert any_store.get(issued.grant.id) == issued.grant
    assert any_store.authenticate(issued.token).placeholder_of("shaped") == \
        issued.placeholders["shaped"]
    revoked = any_store.revoke(issued.grant.id, utc_now())
    assert revoked.placeholders == issued.grant.placeholders
    plain = issue_grant(policy, any_store, agent="bot", task="store", ttl=None,
                        secrets=["plain"], max_uses=None, now=utc_now())
    assert any_store.get(plain.grant.id).placeholders == ()


# --- command backend ---------------------------------------------------------------------------


def command_secret(tmp_path: Path, script: str, **extra: str):
    program = tmp_path / "fetch.py"
    program.write_text(script)
    fields = "".join(f"    {key}: {value}\n" for key, value in extra.items())
    return load_policy_text(
        "version: 1\nsecrets:\n  s:\n    from: command\n"
        f"    command: [{json.dumps(sys.executable)}, {json.dumps(str(program))}]\n{fields}"
        "    destinations: [{host: a.example}]\n").secrets["s"]


def test_command_value_is_cached_for_its_ttl(tmp_path: Path):
    counter = tmp_path / "count"
    secret = command_secret(tmp_path, textwrap.dedent(f"""\
        import pathlib, secrets
        p = pathlib.Path({str(counter)!r})
        p.write_text(str(int(p.read_text() or 0) + 1) if p.exists() else "1")
        print(secrets.token_urlsafe(16))
        """), cache_ttl="1m")
    resolver = SecretResolver(Home(tmp_path / "home").ensure())
    first, second = resolver.resolve(secret), resolver.resolve(secret)
    assert first.reveal() == second.reveal()
    assert counter.read_text() == "1"


def test_command_that_overruns_its_timeout_is_unavailable(tmp_path: Path):
    secret = command_secret(tmp_path, "import time\ntime.sleep(30)\n", timeout="1s")
    resolver = SecretResolver(Home(tmp_path / "home").ensure())
    with pytest.raises(SecretUnavailable, match="timed out after 1 s"):
        resolver.resolve(secret)
