"""An addon manager that looks up each hook's handlers once, not on every flow event.

mitmproxy's AddonManager walks the whole chain with `getattr` and a `contextlib` guard for every
hook of every flow, and follows each flow hook with an `update` hook that walks it again. With the
broker's short chain that walk is still a large share of the per-request cost, so `broker-proxy
run` uses this manager: handlers are collected per hook name when first needed, the table is
dropped whenever the chain changes, and a hook nobody handles costs one dict lookup.

It must dispatch exactly as mitmproxy does (a test compares both on the same addon trees):

- handlers are grouped by top-level addon; an exception in one is logged and ends the rest of
  *that* addon's group (its children), the next top-level addon still runs;
- `AddonHalt` stops the chain, `OptionsError` propagates;
- a top-level addon that has children (`addons`) may change them at any time (mitmproxy's
  script loader does), so such an addon's tree is walked on each event, as mitmproxy does;
- a hook attribute that is neither callable nor a module is an error, logged like a failure.

``check`` verifies at start-up that the methods this class overrides still have the shape it
was written against (mitmproxy 12.3).
"""

from __future__ import annotations

import inspect
import logging
import types
from collections.abc import Callable
from typing import Any

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy import addonmanager, exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


class _Tree:
    """A top-level addon with children: walked on every event, as mitmproxy does."""

    __slots__ = ("addon",)

    def __init__(self, addon: Any) -> None:
        self.addon = addon


class _NotCallable:
    """A hook attribute mitmproxy refuses (AddonManagerError, logged): kept to refuse alike."""

    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


Entry = Handler | _Tree | _NotCallable


class IndexedAddonManager(AddonManager):
    """AddonManager whose hook dispatch uses a per-hook table of handlers."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, tuple[Entry, ...]] = {}

    def clear(self) -> None:
        self._handlers.clear()
        super().clear()

    def add(self, *addons: Any) -> None:
        self._handlers.clear()
        super().add(*addons)

    def remove(self, addon: Any) -> None:
        self._handlers.clear()
        super().remove(addon)

    def handlers(self, name: str) -> tuple[Entry, ...]:
        """One entry per top-level addon that may handle hook `name`, in chain order."""
        found = self._handlers.get(name)
        if found is None:
            collected: list[Entry] = []
            for addon in self.chain:
                if hasattr(addon, "addons"):
                    collected.append(_Tree(addon))
                    continue
                func = getattr(addon, name, None)
                if not func or isinstance(func, types.ModuleType):
                    continue
                collected.append(func if callable(func) else _NotCallable(
                    f"Addon handler {name} ({addon}) not callable"))
            found = self._handlers[name] = tuple(collected)
        return found

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        # Hook.args() walks dataclasses.fields() each time: read once, not once per use.
        args = event.args()
        await self._dispatch(event, args)
        message = args[0]
        if isinstance(message, flow.Flow) and self.handlers("update"):
            await self.trigger_event(hooks.UpdateHook([message]))

    async def trigger_event(self, event: hooks.Hook) -> None:
        if self.handlers(event.name):
            await self._dispatch(event, event.args())

    async def _dispatch(self, event: hooks.Hook, args: list[Any]) -> None:
        """Run `event`'s handlers with `args` (its arguments), as trigger_event does."""
        for entry in self.handlers(event.name):
            try:
                if isinstance(entry, _Tree):
                    await self.invoke_addon(entry.addon, event)
                elif isinstance(entry, _NotCallable):
                    raise exceptions.AddonManagerError(entry.message)
                else:
                    result = entry(*args)
                    if result is not None and inspect.isawaitable(result):
                        await result
            except exceptions.AddonHalt:
                return
            except exceptions.OptionsError:
                raise
            except Exception as error:
                logger.error(f"Addon error: {error}", exc_info=True)


def check() -> None:
    """Refuse a mitmproxy whose AddonManager no longer has what this class builds on."""
    for name in ("trigger_event", "handle_lifecycle", "invoke_addon"):
        method = getattr(AddonManager, name, None)
        require(inspect.iscoroutinefunction(method)
                and list(inspect.signature(method).parameters)[:2] in (["self", "event"],
                                                                       ["self", "addon"]),
                f"AddonManager.{name} changed")
    for name in ("add", "remove", "clear", "register", "invoke_addon_sync", "trigger"):
        require(callable(getattr(AddonManager, name, None)), f"AddonManager.{name} is missing")
    require(callable(getattr(addonmanager, "safecall", None)) and callable(traverse),
            "mitmproxy.addonmanager.safecall or traverse is missing")
    probe = [types.SimpleNamespace(addons=[types.SimpleNamespace()])]
    require(len(list(traverse(probe))) == 2, "mitmproxy.addonmanager.traverse changed")
