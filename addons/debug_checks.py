"""Turn off mitmproxy's debug-only type checks of every HTTP message it builds.

mitmproxy type-checks each field of every Request and Response it constructs, but only under
``if __debug__`` (that is, unless Python runs with -O): a development aid, not a safety check
(the fields come from its own parser). On the broker's hot path it cost about 6% of the CPU
per request, so `broker-proxy run` switches it off as -O would, without also stripping the
asserts of everything else. ``install`` refuses to run on a mitmproxy without that check rather
than silently doing nothing.
"""

from __future__ import annotations

from mitmproxy.http import MessageData

from addons.response_limits import IncompatibleMitmproxy


def _no_type_check(self: MessageData) -> None:
    """What MessageData.__post_init__ is under python -O."""


def install() -> None:
    if not __debug__ or MessageData.__dict__.get("__post_init__") is _no_type_check:
        return  # under -O mitmproxy defines no check at all
    if "__post_init__" not in MessageData.__dict__:
        raise IncompatibleMitmproxy("mitmproxy MessageData.__post_init__ is missing: "
                                    "broker-proxy needs mitmproxy 12.3")
    MessageData.__post_init__ = _no_type_check  # type: ignore[method-assign]
