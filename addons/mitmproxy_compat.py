"""The one error every patch of a mitmproxy internal raises when that internal is not as read.

broker-proxy reaches into mitmproxy (the addon manager, the HTTP layer's early size check, the
debug type checks, server connections' address guard, the listener). pyproject pins the minor
series those were read from; each patch also checks at start-up that what it patches is there
and behaves as expected, and the proxy refuses to start with one line rather than run with a
patch that silently does nothing or does something else.
"""

from __future__ import annotations

from mitmproxy import version


class IncompatibleMitmproxy(Exception):
    """A patched mitmproxy internal is missing or behaves differently than expected."""


def require(condition: bool, what: str) -> None:
    """Refuse to start unless `condition` holds; `what` names the internal that changed."""
    if not condition:
        raise IncompatibleMitmproxy(
            f"mitmproxy {version.VERSION} is not supported: {what} "
            "(broker-proxy is tested with mitmproxy 12.3.x)")
