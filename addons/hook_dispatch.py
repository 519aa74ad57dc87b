"""An addon manager that looks up each hook's handlers once, not on every flow event.

mitmproxy's AddonManager walks the whole chain with `getattr` and a `contextlib` guard for every
hook of every flow, and follows each flow hook with an `update` hook that walks it again. With the
broker's short chain that walk is still a large share of the per-request cost, so `broker-proxy
run` uses this manager: handlers are collected per hook name when first needed, the table is
dropped whenever the chain changes, and a hook nobody handles costs one dict lookup. Error
handling matches mitmproxy's: a failing handler is logged and the next addon still runs,
`AddonHalt` stops the chain, `OptionsError` propagates.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

from mitmproxy import exceptions, flow, hooks
from mitmproxy.addonmanager import AddonManager, traverse

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


class IndexedAddonManager(AddonManager):
    """AddonManager whose hook dispatch uses a per-hook table of handlers."""

    def __init__(self, master: Any) -> None:
        super().__init__(master)
        self._handlers: dict[str, tuple[Handler, ...]] = {}

    def clear(self) -> None:
        self._handlers.clear()
        super().clear()

    def add(self, *addons: Any) -> None:
        self._handlers.clear()
        super().add(*addons)

    def remove(self, addon: Any) -> None:
        self._handlers.clear()
        super().remove(addon)

    def handlers(self, name: str) -> tuple[Handler, ...]:
        """Every callable for hook `name`, in chain order (children after their parent)."""
        found = self._handlers.get(name)
        if found is None:
            collected = []
            for addon in traverse(self.chain):
                func = getattr(addon, name, None)
                if callable(func):
                    collected.append(func)
            found = self._handlers[name] = tuple(collected)
        return found

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers("update") and isinstance(event.args()[0], flow.Flow):
            await self.trigger_event(hooks.UpdateHook([event.args()[0]]))

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if not handlers:
            return
        args = event.args()
        for func in handlers:
            try:
                result = func(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except (exceptions.AddonHalt, exceptions.OptionsError) as stop:
                if isinstance(stop, exceptions.AddonHalt):
                    return
                raise
            except Exception as error:
                logger.error(f"Addon error: {error}", exc_info=True)
