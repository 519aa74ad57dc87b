"""Turn off mitmproxy's debug-only type checks of every HTTP message it builds.

mitmproxy type-checks each field of every Request and Response it constructs, but only under
``if __debug__`` (that is, unless Python runs with -O): a development aid, not a safety check
(the fields come from its own parser). On the broker's hot path it cost about 6% of the CPU
per request, so `broker-proxy run` switches it off as -O would, without also stripping the
asserts of everything else. ``install`` first checks that the method it replaces is that type
check (it rejects a wrongly typed field), so a mitmproxy that moved or changed it is refused.
"""

from __future__ import annotations

import copy

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy import http
from mitmproxy.http import MessageData


def _no_type_check(self: MessageData) -> None:
    """What MessageData.__post_init__ is under python -O."""


def _is_the_type_check(method: object) -> bool:
    data = copy.copy(http.Request.make("GET", "http://probe.invalid/").data)
    data.http_version = "not bytes"  # type: ignore[assignment]
    try:
        method(data)  # type: ignore[operator]
    except TypeError:
        return True
    return False


def install() -> None:
    if not __debug__:
        return  # under -O mitmproxy defines no check
    method = MessageData.__dict__.get("__post_init__")
    if method is _no_type_check:
        return
    require(callable(method) and _is_the_type_check(method),
            "http.MessageData.__post_init__ is not the debug type check it used to be")
    MessageData.__post_init__ = _no_type_check  # type: ignore[method-assign]
