"""Policy fuzz (all classes at once): whatever the host, path, method and placeholder positions,
a secret value only ever appears in an ``Allowed`` whose destination the policy allows for that
secret, in a place its ``inject`` list names, for a secret the grant holds."""

from __future__ import annotations

import base64
from urllib.parse import quote

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker_proxy.decision.request_scan import NEVER_INJECT_HEADERS
from broker_proxy.policy.destinations import HostError, canonical_host
from broker_proxy.request.outbound import Allowed, OutboundRequest
from tests.decision_setup import API, EVIL, PLAIN_HOST, VAULT_HOST

GRANTED = ("api_key", "header_only", "vault_key")
NAMES = (*GRANTED, "spare", "nope")

ODD_HOSTS = [API.upper(), API + ".", EVIL, PLAIN_HOST, "pypi.org", "127.0.0.1", f"{API}@{EVIL}",
             f"{EVIL}.{API}", f"x.{API}", "2130706433", "[::1]", "\u0430pi.example.com"]
segments = st.sampled_from(["v1", "v2", "admin", "..", ".", "", "%2e%2e", "%2f", "..;", "a;b",
                            "%252e", "x%5c", "%76%31", "things", "\\", "%00", "*"])
ODD_PLACES = ["path", "cookie", "referer", "basic", "encoded", "header_name"]


@st.composite
def outbound_parts(draw: st.DrawFn) -> tuple[str, int, str, str, list[tuple[str, str]]]:
    """A request the grant allows, then zero or more dimensions bent out of shape.

    Starting from an allowed request makes most examples reach the swap, so the oracle is
    exercised on injections and on near misses, not only on refusals.
    """
    host = draw(st.sampled_from([API, VAULT_HOST]))
    port, method, path = 443, draw(st.sampled_from(["GET", "POST"])), "/v1/things"
    # Which granted secrets may go where on that host, as the policy in test_broker_decide says.
    allowed = ([("header", "api_key"), ("query", "api_key"), ("body", "api_key"),
                ("header", "header_only")] if host == API else [("header", "vault_key")])
    placed = draw(st.lists(st.sampled_from(allowed), min_size=1, max_size=3))
    bend = draw(st.sets(st.sampled_from(["host", "port", "method", "path", "place", "name"])))
    if "host" in bend:
        host = draw(st.sampled_from(ODD_HOSTS) | st.from_regex(r"[a-z0-9.\-]{1,20}",
                                                                  fullmatch=True))
    if "port" in bend:
        port = draw(st.sampled_from([8443, 80, 0]))
    if "method" in bend:
        method = draw(st.sampled_from(["DELETE", "TRACE", "TRACK", "PUT", "get", "CONNECT"]))
    if "path" in bend:
        path = draw(st.lists(segments, max_size=5).map(lambda parts: "/" + "/".join(parts)))
    if "place" in bend:
        index = draw(st.integers(0, len(placed) - 1))
        placed[index] = (draw(st.sampled_from(ODD_PLACES)), placed[index][1])
    if "name" in bend:
        index = draw(st.integers(0, len(placed) - 1))
        placed[index] = (placed[index][0], draw(st.sampled_from(NAMES)))
    return host, port, method, path, placed


def _placeholder(setup_, name: str) -> str:
    secret = setup_.broker.policy.policy.secrets.get(name)
    return secret.placeholder if secret else "{{secret:" + name + "}}"


def _build(setup_, host, port, method, path, placed) -> OutboundRequest:
    headers: list[tuple[str, str]] = []
    query: list[str] = []
    body = ""
    for place, name in placed:
        text = _placeholder(setup_, name)
        if place == "header":
            headers.append(("X-Key", text))
        elif place == "header_name":
            headers.append((text, "1"))
        elif place == "query":
            query.append("k=" + quote(text, safe=""))
        elif place == "body":
            body += f"k={text}&"
        elif place == "path":
            path += "/" + text
        elif place == "cookie":
            headers.append(("Cookie", f"k={text}"))
        elif place == "referer":
            headers.append(("Referer", f"https://{API}/?k={text}"))
        elif place == "basic":
            headers.append(("Authorization",
                            "Basic " + base64.b64encode(f"u:{text}".encode()).decode()))
        elif place == "encoded":
            headers.append(("X-Key", quote(text, safe="")))
    return OutboundRequest(method=method, scheme="https", host=host, port=port, path=path,
                           query="&".join(query), headers=tuple(headers), body=body.encode())


@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=outbound_parts())
def test_a_secret_only_ever_reaches_a_destination_the_policy_allows(setup, parts):
    if not hasattr(setup, "fuzz_grant"):
        setup.fuzz_grant = setup.issue(*GRANTED)
    outbound = _build(setup, *parts)
    verdict = setup.broker.decide(setup.fuzz_grant.token, outbound)
    values = setup.values
    if not isinstance(verdict, Allowed):
        event(f"denied: {verdict.error}")
        setup.assert_no_secret_in(verdict.body())
        return
    event(f"allowed, injected {len(verdict.injected)} secret(s)")
    policy = setup.broker.policy
    headers = verdict.headers if verdict.headers is not None else outbound.headers
    query = verdict.query if verdict.query is not None else outbound.query
    body = (verdict.body if verdict.body is not None else outbound.body).decode("latin-1")
    sent_path = verdict.path if verdict.path is not None else outbound.path
    for name, value in values.items():
        where = {
            "header": any(value in v for n, v in headers if n.lower() not in NEVER_INJECT_HEADERS),
            "never": any(value in v or value in n for n, v in headers
                         if n.lower() in NEVER_INJECT_HEADERS) or any(value in n
                                                                       for n, _ in headers),
            "query": value in query or quote(value, safe="") in query,
            "body": value in body,
            "path": value in sent_path,
        }
        if not any(where.values()):
            continue
        assert name in GRANTED and name in verdict.injected
        secret = policy.policy.secrets[name]
        assert not where["never"] and not where["path"]
        for place in ("header", "query", "body"):
            assert not where[place] or place in secret.inject, (name, place)
        try:
            canonical = canonical_host(outbound.host)
        except HostError:  # pragma: no cover - such a host must never be allowed
            raise AssertionError("a secret was sent to a host with no canonical form") from None
        assert policy.index.allows(name, "https", canonical, outbound.port, outbound.method,
                                   sent_path), (name, canonical, outbound.port, sent_path)
