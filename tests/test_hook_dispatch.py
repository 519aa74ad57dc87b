"""The indexed addon manager dispatches hooks as mitmproxy's own manager does."""

from __future__ import annotations

import asyncio
import logging

import pytest
from broker_proxy.addons.hook_dispatch import IndexedAddonManager
from mitmproxy import exceptions, options
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow


class Recorder:
    def __init__(self, name: str, calls: list[str], fail: Exception | None = None) -> None:
        self.name, self._calls, self._fail = name, calls, fail

    def request(self, flow: object) -> None:
        self._calls.append(f"{self.name}.request")
        if self._fail is not None:
            raise self._fail


class AsyncRecorder(Recorder):
    async def request(self, flow: object) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        self._calls.append(f"{self.name}.request")


class Parent:
    def __init__(self, calls: list[str]) -> None:
        self.addons = [Recorder("child", calls)]


def dispatch(*make: object, hook: type = HttpRequestHook) -> tuple[list[str], Master]:
    calls: list[str] = []

    async def main() -> Master:
        master = Master(options.Options())
        master.addons = IndexedAddonManager(master)
        master.addons.add(*[factory(calls) for factory in make])  # type: ignore[operator]
        await master.addons.handle_lifecycle(hook(tflow.tflow()))
        return master

    return calls, asyncio.run(main())


def test_handlers_run_in_chain_order_with_children_and_coroutines() -> None:
    calls, _ = dispatch(lambda c: Recorder("a", c), Parent, lambda c: AsyncRecorder("b", c))
    assert calls == ["a.request", "child.request", "b.request"]


def test_a_failing_handler_is_logged_and_the_chain_goes_on(caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    with caplog.at_level(logging.ERROR):
        calls, _ = dispatch(lambda c: Recorder("a", c, RuntimeError("boom")),
                            lambda c: Recorder("b", c))
    assert calls == ["a.request", "b.request"]
    assert "Addon error: boom" in caplog.text


def test_addon_halt_stops_the_chain() -> None:
    calls, _ = dispatch(lambda c: Recorder("a", c, exceptions.AddonHalt()),
                        lambda c: Recorder("b", c))
    assert calls == ["a.request"]


def test_a_hook_nobody_handles_calls_nothing_and_the_table_follows_the_chain() -> None:
    calls, master = dispatch(lambda c: Recorder("a", c), hook=HttpResponseHook)
    assert calls == []
    assert len(master.addons.handlers("request")) == 1
    master.addons.add(Recorder("late", calls))
    assert len(master.addons.handlers("request")) == 2  # the table was rebuilt


class Tree:
    """A parent whose own hook may fail or halt, with children that can be added later."""

    def __init__(self, name: str, calls: list[str], fail: Exception | None = None,
                 children: int = 1) -> None:
        self.name, self._calls, self._fail = name, calls, fail
        self.addons: list[object] = [Recorder(f"{name}.child{i}", calls) for i in range(children)]

    async def request(self, flow: object) -> None:
        await asyncio.sleep(0)
        self._calls.append(f"{self.name}.request")
        if self._fail is not None:
            raise self._fail

    def update(self, flows: object) -> None:
        self._calls.append(f"{self.name}.update")


class NotAHook:
    request = "not callable"


TREES = {
    "failing parent skips its children, not the next addon": lambda c: [
        Tree("p", c, RuntimeError("boom"), children=2), Recorder("after", c)],
    "halting parent stops everything": lambda c: [
        Recorder("before", c), Tree("p", c, exceptions.AddonHalt()), Recorder("after", c)],
    "halting child stops everything": lambda c: [
        Tree("p", c, children=0), Recorder("x", c, exceptions.AddonHalt()),
        AsyncRecorder("after", c)],
    "coroutines and children in order": lambda c: [
        AsyncRecorder("a", c), Tree("p", c, children=2), AsyncRecorder("b", c)],
    "a non-callable hook is an error like a failure": lambda c: [
        NotAHook(), Recorder("after", c)],
}


async def _run(manager_class: type, build: object, *, add_child_later: bool
               ) -> tuple[list[str], int]:
    calls: list[str] = []
    master = Master(options.Options())
    master.addons = manager_class(master)
    addons = build(calls)  # type: ignore[operator]
    master.addons.add(*addons)
    errors = 0
    for round_ in range(2):
        if add_child_later and round_ == 1:
            for addon in addons:
                if isinstance(addon, Tree):
                    addon.addons.append(Recorder(f"{addon.name}.late", calls))
        handler = _ErrorCount()
        logging.getLogger().addHandler(handler)
        try:
            await master.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        finally:
            logging.getLogger().removeHandler(handler)
        errors += handler.count
        calls.append("--")
    master._legacy_log_events.uninstall()  # its handler would outlive this event loop
    return calls, errors


class _ErrorCount(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += "Addon error" in record.getMessage()


@pytest.mark.parametrize("add_child_later", [False, True])
@pytest.mark.parametrize("tree", sorted(TREES))
def test_indexed_dispatch_matches_mitmproxys_addon_manager(tree: str,
                                                           add_child_later: bool) -> None:
    from mitmproxy.addonmanager import AddonManager

    async def both() -> tuple[object, object]:
        return (await _run(AddonManager, TREES[tree], add_child_later=add_child_later),
                await _run(IndexedAddonManager, TREES[tree], add_child_later=add_child_later))

    theirs, ours = asyncio.run(both())
    assert ours == theirs


def test_check_accepts_the_installed_mitmproxy_and_refuses_a_changed_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from broker_proxy.addons import hook_dispatch
    from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
    from mitmproxy.addonmanager import AddonManager

    hook_dispatch.check()
    monkeypatch.setattr(AddonManager, "trigger_event", lambda self, event: None)
    with pytest.raises(IncompatibleMitmproxy, match=r"AddonManager\.trigger_event changed"):
        hook_dispatch.check()
