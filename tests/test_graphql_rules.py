"""GraphQL rules without a proxy: the policy fields and how decision/graphql_rules.py reads
requests (tests/test_e2e_graphql_rules.py runs them through the real proxy)."""

from __future__ import annotations

import json
from urllib.parse import urlencode

import pytest

from broker_proxy.decision.graphql_rules import (
    GRAPHQL_INVALID_REQUEST,
    GRAPHQL_OPERATION_NOT_ALLOWED,
    graphql_problem,
)
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.policy.protocol_rules import GraphqlRules, NameRule
from broker_proxy.request.outbound import OutboundRequest

READ_ONLY = GraphqlRules(operations=frozenset({"query"}),
                         fields=NameRule.of((), ("viewer",)), persisted=frozenset({"abc123"}))


def post(body: object, content_type: str = "application/json") -> OutboundRequest:
    raw = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    return OutboundRequest("POST", "https", "api.github.com", 443, "/graphql", "",
                           (("Content-Type", content_type),), raw)


def get(**params: str) -> OutboundRequest:
    return OutboundRequest("GET", "https", "api.github.com", 443, "/graphql",
                           urlencode(params), ())


def code(request: OutboundRequest, rules: GraphqlRules = READ_ONLY) -> str | None:
    refused = graphql_problem(request, rules, "github")
    return refused.code if refused else None


DENIED = GRAPHQL_OPERATION_NOT_ALLOWED


@pytest.mark.parametrize(("request_", "expected"), [
    (post({"query": "{ repository(owner: \"a\", name: \"b\") { name } }"}), None),
    (post({"query": "query Q { a: repository { name } }", "operationName": "Q"}), None),
    (post({"query": "mutation { deleteRepository(id: 1) { id } }"}), DENIED),
    (post("mutation { closeIssue(id: 1) { id } }", "application/graphql"), DENIED),
    # Several operations: every one is checked, whichever operationName picks.
    (post({"query": "query A { repository { name } } mutation B { closeIssue { id } }",
           "operationName": "A"}), DENIED),
    (post({"query": "query A { x } query B { y }"}), GRAPHQL_INVALID_REQUEST),
    (post({"query": "query A { x }", "operationName": "Nope"}), GRAPHQL_INVALID_REQUEST),
    # An alias renames the answer, not the field; fragments are spread.
    (post({"query": "{ repo: viewer { login } }"}), DENIED),
    (post({"query": "{ ...F } fragment F on Query { viewer { login } }"}), DENIED),
    (post({"query": "{ ... on Query { ... on Query { viewer { login } } } }"}), DENIED),
    (post({"query": "{ ...Missing }"}), GRAPHQL_INVALID_REQUEST),
    # Batched arrays: each element.
    (post([{"query": "{ repository { name } }"}, {"query": "mutation { x }"}]), DENIED),
    (post([{"query": "{ repository { name } }"}] * 2), None),
    # GET ?query=
    (get(query="{ repository { name } }"), None),
    (get(query="mutation { closeIssue { id } }"), DENIED),
    # The URL's query beside a harmless body, and a body on another method: both read.
    (OutboundRequest("POST", "https", "api.github.com", 443, "/graphql",
                     urlencode({"query": "mutation { x }"}),
                     (("Content-Type", "application/json"),), b'{"query": "{ a }"}'), DENIED),
    (OutboundRequest("PUT", "https", "api.github.com", 443, "/graphql", "",
                     (("Content-Type", "application/json"),),
                     b'{"query": "mutation { x }"}'), DENIED),
    (get(), GRAPHQL_INVALID_REQUEST),
    # Persisted queries without a document: listed ids only.
    (post({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "abc123"}}}), None),
    (post({"extensions": {"persistedQuery": {"version": 1, "sha256Hash": "ffff"}}}), DENIED),
    (post({"id": "ffff"}), DENIED),
    (get(extensions=json.dumps({"persistedQuery": {"sha256Hash": "ffff"}})), DENIED),
    # Not GraphQL a server could read the same way.
    (post({"query": "{ x "}), GRAPHQL_INVALID_REQUEST),
    (post({"query": "type Query { x: Int }"}), GRAPHQL_INVALID_REQUEST),
    (post(b"{}".decode()), GRAPHQL_INVALID_REQUEST),
    (post('{"query": "{ x }", "query": "mutation { y }"}'), GRAPHQL_INVALID_REQUEST),
    (post({"query": "{ " + "a " * 30_000 + "}"}), GRAPHQL_INVALID_REQUEST),
])
def test_what_is_allowed_and_refused(request_: OutboundRequest, expected: str | None) -> None:
    assert code(request_) == expected


def test_operation_names() -> None:
    rules = GraphqlRules(names=NameRule.of(("Get*",), ()))
    assert code(post({"query": "query GetIssue { x }"}), rules) is None
    assert code(post({"query": "query DropAll { x }"}), rules) == DENIED
    assert code(post({"query": "{ x }"}), rules) == DENIED  # anonymous: no name to match


def test_policy_fields_and_mistakes() -> None:
    text = """\
version: 1
secrets:
  github:
    from: env:GH
    destinations:
      - host: api.github.com
        paths: [/graphql]
        graphql:
          operations: [query]
          fields: {deny: [viewer]}
          persisted: [abc123]
agents:
  bot: {secrets: [github]}
"""
    rules = load_policy_text(text).secrets["github"].destinations[0].graphql
    assert rules is not None and rules.operations == {"query"}
    assert rules.persisted == {"abc123"}
    with pytest.raises(PolicyError) as raised:
        load_policy_text(text.replace("[query]", "[query, mutations]"), source="p.yaml")
    assert str(raised.value.issues[0]).startswith(
        'p.yaml:9:31: secrets.github.destinations[0].graphql.operations[1]: unknown operation '
        'type "mutations"')
