"""Turn off mitmproxy's debug-only type checks of every HTTP message it builds.

mitmproxy type-checks each field of every Request and Response it constructs, but only under
``if __debug__`` (that is, unless Python runs with -O): a development aid, not a safety check
(the fields come from its own parser). On the broker's hot path it cost about 6% of the CPU
per request, so `broker-proxy run` switches it off as -O would, without also stripping the
asserts of everything else. A mitmproxy without that check needs nothing switched off.
"""

from __future__ import annotations

from mitmproxy.http import MessageData


def _no_type_check(self: MessageData) -> None:
    """What MessageData.__post_init__ is under python -O."""


def install() -> None:
    if "__post_init__" in MessageData.__dict__:
        MessageData.__post_init__ = _no_type_check  # type: ignore[method-assign]
