"""The indexed addon manager dispatches hooks as mitmproxy's own manager does."""

from __future__ import annotations

import asyncio
import logging

import pytest
from mitmproxy import exceptions, options
from mitmproxy.master import Master
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHook
from mitmproxy.test import tflow

from addons.hook_dispatch import IndexedAddonManager


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
