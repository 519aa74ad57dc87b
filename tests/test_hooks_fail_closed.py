"""Every hook of every broker addon fails closed: found by introspection, not by a hand list.

The addons are built as `broker-proxy run` and `mitmdump -s addons/broker.py` build them; the
hooks are the names in mitmproxy's own hook registry that each addon defines. A fault is
injected into each (the hook raises at once, or from the coroutine it returned), and the hook is
run as mitmproxy runs it. The flow must end denied, withheld or cut (never forwarded), and a
``hook_failed`` audit record must say which hook and what was done. A hook added to an addon
later is found here without anyone listing it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from broker_proxy.addons import fail_closed
from broker_proxy.addons.broker_addon import BrokerAddon
from broker_proxy.addons.runner import ProxySettings, broker_addons
from mitmproxy import flow, http, options, tls
from mitmproxy.proxy import context, server_hooks
from mitmproxy.test import taddons, tflow

from broker_proxy.audit.evidence import verify_evidence
from broker_proxy.policy.resolve_pins import ResolvePins
from tests.decision_setup import Setup

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

# What each hook's fallback must have done (fail_closed.fail), by hook name.
EXPECTED = {name: "denied" for name in fail_closed.REQUEST_HOOKS} | {
    name: "withheld" for name in fail_closed.ANSWER_HOOKS} | {
    "server_connect": "refused", "server_connected": "closed", "client_connected": "closed"}


def _all_addons(setup: Setup, tmp_path: Path) -> list[Any]:
    """Every addon the two entry points register, as they register them."""
    from broker_proxy.addons import broker as script  # the mitmdump -s entry point

    settings = ProxySettings("127.0.0.1", 0, tmp_path, None, ResolvePins())
    entry = script.BrokerScript()
    entry.inner = BrokerAddon(setup.broker)  # started: its records go to the broker's log
    return [*broker_addons(setup.broker, settings), entry, entry.limits, entry.agent_view]


def _discovered(setup: Setup, tmp_path: Path) -> list[tuple[type, str]]:
    return list(dict.fromkeys((type(addon), name) for addon in _all_addons(setup, tmp_path)
                              for name in fail_closed.hooks_of(addon)))


def _subject(name: str) -> Any:
    """An argument of the kind mitmproxy passes to hook `name`."""
    if name in fail_closed.ANSWER_HOOKS:
        return tflow.tflow(resp=True)
    if name.startswith("websocket_"):
        return tflow.tflow(resp=True, ws=True)
    if name == "error":
        return tflow.tflow(err=True)
    if name.startswith(("http_", "request")):
        return tflow.tflow()
    if name.startswith("tcp_"):
        return tflow.ttcpflow()
    if name.startswith("udp_"):
        return tflow.tudpflow()
    if name.startswith("dns_"):
        return tflow.tdnsflow()
    if name.startswith("server_"):
        return server_hooks.ServerConnectionHookData(server=tflow.tserver_conn(),
                                                     client=tflow.tclient_conn())
    if name.startswith("tls_"):
        return tls.TlsData(tflow.tserver_conn(),
                           context.Context(tflow.tclient_conn(), options.Options()))
    if name.startswith("client_"):
        return tflow.tclient_conn()
    raise AssertionError(f"no test argument for hook {name}: add one here")


def _fault(later: bool) -> Any:
    def raises(self: object, *args: object) -> Any:
        if later:
            async def fails() -> None:
                raise RuntimeError("injected fault")
            return fails()
        raise RuntimeError("injected fault")
    return raises


async def _called(hook: Any, subject: Any) -> None:
    result = hook(subject)
    if isinstance(result, Coroutine):
        await result


def _call(hook: Any, subject: Any) -> None:
    async def main() -> None:
        with taddons.context():
            await _called(hook, subject)

    asyncio.run(main())


def _assert_stopped(name: str, subject: Any) -> None:
    outcome = EXPECTED.get(name)
    if outcome == "denied":
        assert subject.response is not None, "the request would have been forwarded"
        assert subject.response.status_code == 503
        assert json.loads(subject.response.content)["error"] == "internal_error"
    elif outcome == "withheld":
        assert subject.response.status_code == 502
        assert json.loads(subject.response.content)["error"] == "response_withheld"
    elif name == "server_connect":
        assert subject.server.error, "the upstream would have been dialled"
    elif isinstance(subject, flow.Flow):
        assert not subject.live and subject.error is not None, "the flow went on"
        if name == "websocket_message":
            assert subject.websocket.messages[-1].dropped


@pytest.mark.parametrize("later", [False, True], ids=["raises", "its_coroutine_raises"])
def test_every_hook_of_every_addon_fails_closed_and_is_recorded(
        setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, later: bool) -> None:
    found = _discovered(setup, tmp_path)
    # A floor: the introspection must see the hooks that decide, or it proves nothing.
    assert {("Decide", "request"), ("TunnelAuth", "http_connect"),
            ("ScrubAnswers", "response"), ("UpstreamGuard", "server_connect")} <= {
        (cls.__name__, name) for cls, name in found}
    runs: list[tuple[type, str, Any]] = []

    async def main() -> None:
        with taddons.context():  # one master: mitmproxy's log handler outlives a context
            for cls, name in found:
                with monkeypatch.context() as patch:
                    patch.setattr(cls, name, _fault(later))
                    addon = next(a for a in _all_addons(setup, tmp_path) if type(a) is cls)
                    hook = getattr(addon, name)
                    assert getattr(hook, fail_closed.GUARDED, None) is not None, (
                        f"{cls.__name__}.{name} was registered without the fail-closed wrapper")
                    subject = _subject(name)
                    await _called(hook, subject)
                runs.append((cls, name, subject))

    asyncio.run(main())
    print("hooks found:", sorted(f"{cls.__name__}.{name}" for cls, name in found))
    for cls, name, subject in runs:
        _assert_stopped(name, subject)
        where = f"{cls.__name__}.{name}"
        records = [r for r in setup.records() if r["event"] == "hook_failed"
                   and r["hook"] == where]
        assert records, f"{where}: no hook_failed record"
        assert records[-1]["decision"] == "deny"
        assert records[-1]["hook_error"] == "RuntimeError"
        assert records[-1]["hook_outcome"] == EXPECTED.get(
            name, "killed" if isinstance(subject, flow.Flow) else "logged")
    # Every hook_failed record is evidence like any other: schema, chain and MACs verify.
    evidence = verify_evidence(setup.home.audit_log, setup.home.audit_key)
    assert evidence.ok, evidence.verdict


def test_the_lifecycle_hooks_are_left_to_mitmproxy(setup: Setup, tmp_path: Path) -> None:
    """configure's OptionsError must reach mitmproxy, which refuses the option."""
    for addon in _all_addons(setup, tmp_path):
        for name in fail_closed.LIFECYCLE:
            hook = getattr(addon, name, None)
            assert hook is None or getattr(hook, fail_closed.GUARDED, None) is None


def test_a_request_hook_fault_is_denied_and_recorded_with_the_request(setup: Setup) -> None:
    """The record carries the request's fields, like a decision's (never the query)."""
    addon = BrokerAddon(setup.broker)
    flow_ = tflow.tflow()
    flow_.request.path = "/v1/things?key=value"

    def broken(*args: object) -> None:
        raise ValueError("a message that may quote a secret")

    hook = fail_closed.wrap("Decide", "request", broken, lambda: setup.broker.audit)
    _call(hook, flow_)
    assert flow_.response is not None and flow_.response.status_code == 503
    record = [r for r in setup.records() if r["event"] == "hook_failed"][-1]
    assert (record["method"], record["host"], record["path"]) == (
        flow_.request.method, flow_.request.host, "/v1/things")
    assert "quote" not in json.dumps(record)
    assert isinstance(addon.addons, list)


def test_an_unwritable_audit_log_still_denies(setup: Setup) -> None:
    class Broken:
        def append(self, event: str, *, durable: bool = False,
                   **fields: object) -> dict[str, Any]:
            raise OSError("disk full")

    def broken(*args: object) -> None:
        raise RuntimeError("injected fault")

    flow_ = tflow.tflow(resp=http.Response.make(200, b"secret-ish"))
    _call(fail_closed.wrap("ScrubAnswers", "response", broken, Broken), flow_)
    assert flow_.response is not None and flow_.response.status_code == 502
