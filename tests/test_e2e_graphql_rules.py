"""GraphQL rules through the real proxy: a graphql-core server behind local HTTPS, httpx as the
client. A read-only grant (operations: [query], the viewer field denied) gets its queries
through with the real credential; mutations are refused with 403
graphql_operation_not_allowed, and aliases, fragments, several operations in one document,
batches and GET queries are no way around the rule. Nothing refused reaches the server."""

from __future__ import annotations

import json
import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from graphql import build_schema, graphql_sync

from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.conftest import master_key_in_environment, random_master_key

pytestmark = pytest.mark.e2e

HOST = "graphql.test.local"
PLACEHOLDER = "ghp_PLACEHOLDER_graphql_000000000"
SCHEMA = build_schema("""
type Repository { name: String! issues: Int! }
type User { login: String! }
type Query { repository(name: String!): Repository viewer: User }
type Mutation { deleteRepository(name: String!): Boolean closeIssue(id: Int!): Boolean }
""")
ROOT = {"repository": lambda _info, name: {"name": name, "issues": 2},
        "viewer": {"login": "octocat"}, "deleteRepository": lambda _info, name: True,
        "closeIssue": lambda _info, id: True}
POLICY = """\
version: 1
secrets:
  github:
    from: vault
    placeholder: "{placeholder}"
    destinations:
      - host: {host}
        port: {port}
        methods: [GET, POST]
        paths: [/graphql]
        graphql:
          operations: [query]
          fields: {{deny: [viewer]}}
agents:
  bot:
    secrets: [github]
network:
  allow_addresses: [127.0.0.1/32]
"""


def graphql_reply(request: ReceivedRequest) -> tuple[int, list[tuple[str, str]], bytes]:
    """Execute what arrived: a POST body (one request or a batch) or GET ?query=."""
    if request.method == "GET":
        from urllib.parse import parse_qs, urlsplit
        params = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        items: list[dict[str, object]] = [params]
    else:
        document = json.loads(request.body)
        items = document if isinstance(document, list) else [document]
    results = []
    for item in items:
        result = graphql_sync(SCHEMA, str(item["query"]), root_value=ROOT,
                              operation_name=item.get("operationName"))  # type: ignore[arg-type]
        results.append({"data": result.data,
                        **({"errors": [str(e) for e in result.errors]} if result.errors
                           else {})})
    body = results if len(items) > 1 else results[0]
    return 200, [("Content-Type", "application/json")], json.dumps(body).encode()


@dataclass
class GraphqlStack:
    root: Path
    home: Home
    proxy: ProxyProcess
    server: EchoServer
    value: str
    token: str

    def send(self, method: str, *, body: object = None, params: dict[str, str] | None = None
             ) -> httpx.Response:
        context = ssl.create_default_context(cafile=str(self.proxy.ca_path))
        with httpx.Client(proxy=self.proxy.proxy_url(self.token, "bot"), verify=context,
                          timeout=20) as client:
            return client.request(method, f"https://{HOST}:{self.server.port}/graphql",
                                  params=params, json=body,
                                  headers={"Authorization": f"bearer {PLACEHOLDER}"})


@pytest.fixture(scope="module")
def gql(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GraphqlStack]:
    pki = write_pki(tmp_path_factory.mktemp("graphql-pki"), [HOST])
    server = EchoServer(pki.cert_path, pki.key_path, reply=graphql_reply).start()
    root = tmp_path_factory.mktemp("graphql")
    home = Home(root / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    value = "real-github-" + secrets.token_urlsafe(24)
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        Vault(home.vault, load_or_create_master_key(home, create=True)).set("github", value)
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(placeholder=PLACEHOLDER, host=HOST, port=server.port))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         resolve={HOST: "127.0.0.1"}, log_path=root / "proxy.log").start()
    store = SqliteGrantStore(home.grants_db)
    try:
        grant = issue_grant(load_policy(policy_file), store, agent="bot", task="graphql e2e",
                            secrets=["github"], ttl=None, max_uses=None, now=utc_now(),
                            proxy_url_base=proxy.info["listen"])
    finally:
        store.close()
    yield GraphqlStack(root, home, proxy, server, value, grant.token)
    proxy.stop()
    server.stop()
    assert value not in home.audit_log.read_text() + (root / "proxy.log").read_text()


@pytest.fixture(autouse=True)
def _clear(gql: GraphqlStack) -> None:
    gql.server.clear()


def _last_record(gql: GraphqlStack) -> dict[str, object]:
    lines = gql.home.audit_log.read_text().splitlines()
    return next(r for r in map(json.loads, reversed(lines)) if r["event"] == "request")


def test_a_query_goes_through_with_the_real_credential(gql: GraphqlStack) -> None:
    answer = gql.send("POST", body={"query": 'query Repo { repository(name: "app") { name } }',
                                    "operationName": "Repo"})
    assert answer.status_code == 200
    assert answer.json() == {"data": {"repository": {"name": "app"}}}
    assert [r.header("authorization") for r in gql.server.requests] == [f"bearer {gql.value}"]
    record = _last_record(gql)
    assert (record["decision"], record["graphql_type"], record["graphql_name"]) == (
        "allow", "query", "Repo")
    answer = gql.send("GET", params={"query": '{ repository(name: "x") { issues } }'})
    assert answer.json() == {"data": {"repository": {"issues": 2}}}


@pytest.mark.parametrize("body", [
    {"query": 'mutation { deleteRepository(name: "app") }'},
    # An alias renames the answer, not the field; the type is still mutation.
    {"query": 'mutation Read { repository: deleteRepository(name: "app") }'},
    # Several operations: operationName picks the harmless one, the document holds both.
    {"query": 'query A { repository(name: "a") { name } } '
              'mutation B { deleteRepository(name: "a") }', "operationName": "A"},
    # A batch: one mutation among queries.
    [{"query": '{ repository(name: "a") { name } }'},
     {"query": "mutation { closeIssue(id: 1) }"}],
    # The viewer field, reached through an alias, a fragment and an inline fragment.
    {"query": "{ me: viewer { login } }"},
    {"query": "{ ...Me } fragment Me on Query { viewer { login } }"},
    {"query": "{ ... on Query { viewer { login } } }"},
    # A persisted query nobody listed.
    {"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "a" * 64}}},
], ids=["mutation", "alias", "multi-operation", "batch", "field-alias", "fragment",
        "inline-fragment", "persisted"])
def test_what_the_rules_refuse_never_reaches_the_server(gql: GraphqlStack,
                                                        body: object) -> None:
    answer = gql.send("POST", body=body)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "graphql_operation_not_allowed"
    assert gql.server.requests == []
    assert _last_record(gql)["reason"] == "graphql_operation_not_allowed"


def test_a_get_mutation_is_refused_too(gql: GraphqlStack) -> None:
    answer = gql.send("GET", params={"query": 'mutation { deleteRepository(name: "a") }'})
    assert answer.status_code == 403
    assert answer.json()["error"] == "graphql_operation_not_allowed"
    answer = gql.send("POST", body={"query": "{ repository(name: "})
    assert answer.status_code == 400
    assert answer.json()["error"] == "graphql_invalid_request"
    assert gql.server.requests == []
