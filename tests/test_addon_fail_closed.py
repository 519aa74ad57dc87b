"""The addon's `except` paths: a raise anywhere ends in a refusal, never a forwarded flow.

mitmproxy logs an exception from a hook and lets the flow go on, so the fail-closed wrapper
every hook is registered through (addons/fail_closed.py) is all that stands between a bug and a
request forwarded untouched. Each test injects a fault into the real broker (a real grant store,
audit log and policy) and runs the hook as mitmproxy would, with its own test helpers; the
refusal is recorded (`hook_failed`). tests/test_hooks_fail_closed.py finds every hook of every
addon by introspection and injects a fault into each.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from broker_proxy.addons.broker_addon import BrokerAddon
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow, tutils

from broker_proxy.decision.broker import Broker
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from tests.decision_setup import API, Setup
from tests.security.raw_proxy import proxy_authorization

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _boom(*args: object, **kwargs: object) -> Any:
    raise RuntimeError("injected fault")


def _run(addon: BrokerAddon, hook: Callable[[], Any]) -> None:
    async def main() -> None:
        with taddons.context(addon):
            result = hook()
            if isinstance(result, Coroutine):
                await result
        await addon.decide.done()

    asyncio.run(main())


def _flow(token: str, *, body: bytes = b"") -> Any:
    flow = tflow.tflow(req=tutils.treq(host=API, port=443, scheme=b"https", path=b"/v1/things",
                                       content=body))
    flow.request.headers["Host"] = API
    flow.request.headers["Authorization"] = "Bearer {{secret:api_key}}"
    flow.request.headers["Proxy-Authorization"] = proxy_authorization(token)
    flow.client_conn.sni = API
    # tflow's client has disconnected already: an allowed request would end "the agent went
    # away" before the rewrite, and a fault there would never be reached.
    flow.client_conn.timestamp_end = None
    return flow


def _refused(flow: Any, status: int = 503, error: str = "internal_error") -> None:
    assert flow.response is not None, "the flow would have been forwarded"
    assert flow.response.status_code == status
    assert json.loads(flow.response.content)["error"] == error
    assert "Proxy-Authorization" not in flow.request.headers


def _recorded(setup: Setup, hook: str, outcome: str) -> None:
    records = [r for r in setup.records() if r["event"] == "hook_failed" and r["hook"] == hook]
    assert records, f"no hook_failed record for {hook}"
    assert (records[-1]["decision"], records[-1]["hook_outcome"]) == ("deny", outcome)


def test_request_decided_inline_fails_closed(setup: Setup, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr("broker_proxy.addons.flow_adapter.outbound_request", _boom)
    addon, flow = BrokerAddon(setup.broker), _flow(grant.token)
    _run(addon, lambda: addon.decide.request(flow))
    _refused(flow)
    _recorded(setup, "Decide.request", "denied")
    assert setup.uses(grant) == 0


def test_request_decided_off_the_loop_fails_closed(setup: Setup,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr(Broker, "may_block", lambda self: True)
    monkeypatch.setattr(Broker, "decide", _boom)
    addon, flow = BrokerAddon(setup.broker), _flow(grant.token)
    _run(addon, lambda: addon.decide.request(flow))
    _refused(flow)
    _recorded(setup, "Decide.request", "denied")


def test_request_whose_audit_fsync_raises_fails_closed(setup: Setup,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr(Broker, "make_durable", _boom)
    addon, flow = BrokerAddon(setup.broker), _flow(grant.token)
    _run(addon, lambda: addon.decide.request(flow))
    _refused(flow)
    _recorded(setup, "Decide.request", "denied")
    assert setup.values["api_key"] not in str(flow.request.headers)


def test_request_whose_rewrite_raises_after_an_allow_fails_closed(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr("broker_proxy.addons.flow_adapter.apply", _boom)
    addon, flow = BrokerAddon(setup.broker), _flow(grant.token)
    _run(addon, lambda: addon.decide.request(flow))
    _refused(flow)
    _recorded(setup, "Decide.request", "denied")


@pytest.mark.parametrize("off_the_loop", [False, True])
def test_tunnel_admission_that_raises_opens_no_tunnel(setup: Setup,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      off_the_loop: bool) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr(Broker, "may_block", lambda self: off_the_loop)
    monkeypatch.setattr(Broker, "admit_tunnel", _boom)
    addon = BrokerAddon(setup.broker)
    connect = tflow.tflow(req=tutils.treq(method=b"CONNECT", host=API, port=443,
                                          authority=f"{API}:443".encode(), path=b""))
    connect.request.headers["Proxy-Authorization"] = proxy_authorization(grant.token)
    _run(addon, lambda: addon.tunnels.http_connect(connect))
    _refused(connect)
    _recorded(setup, "TunnelAuth.http_connect", "denied")
    assert connect.client_conn not in addon.tunnels._tunnel_tokens


def test_grant_store_that_raises_in_a_decision_fails_closed(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = setup.issue("api_key")
    monkeypatch.setattr(SqliteGrantStore, "reserve_use", _boom)
    addon, flow = BrokerAddon(setup.broker), _flow(grant.token)
    _run(addon, lambda: addon.decide.request(flow))
    _refused(flow)
    # The broker itself turns this fault into a recorded refusal; the hook never sees it.
    assert [(r["event"], r["decision"], r["reason"]) for r in setup.records()][-1] == (
        "request", "deny", "internal_error")


@pytest.mark.parametrize("fault", [UnicodeError("label too long"), RuntimeError("bug")])
def test_server_connect_that_raises_dials_nothing(setup: Setup,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  fault: Exception) -> None:
    addon = BrokerAddon(setup.broker)
    client = tflow.tclient_conn()
    addon.upstreams._allowed_upstreams[client] = {(API, 443)}

    async def failing(*args: object) -> list[str]:
        raise fault

    monkeypatch.setattr(addon.upstreams, "_addresses", failing)
    server = connection.Server(address=(API, 443))
    data = server_hooks.ServerConnectionHookData(server=server, client=client)
    _run(addon, lambda: addon.upstreams.server_connect(data))
    assert server.error, "the unchecked name would have been dialled"
    assert server.address == (API, 443)
    _recorded(setup, "UpstreamGuard.server_connect", "refused")
