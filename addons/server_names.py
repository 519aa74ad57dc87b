"""Give an open upstream connection back the name it was dialled for.

The broker dials the IP address it checked (no DNS-rebinding window) and afterwards puts the
name back, because mitmproxy reuses an upstream connection only for requests whose (host, port)
equals the connection's address. ``Server.__setattr__`` refuses address changes on an open
connection (to stop silent re-routing); this change does not re-route, the socket stays on the
checked address, so it goes around the guard with ``object.__setattr__``. ``check`` makes sure
the guard and the plain attribute it protects are still as read from mitmproxy 12.3.
"""

from __future__ import annotations

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy import connection

Address = tuple[str, int]


def restore_name(server: connection.Server, name: Address) -> None:
    object.__setattr__(server, "address", name)


def check() -> None:
    probe = connection.Server(address=("192.0.2.1", 443))
    probe.state = connection.ConnectionState.OPEN
    try:
        probe.address = ("192.0.2.2", 443)
        guarded = False
    except RuntimeError:
        guarded = True
    restore_name(probe, ("probe.invalid", 443))
    require(guarded and probe.address == ("probe.invalid", 443)
            and probe.__dict__.get("address") == ("probe.invalid", 443),
            "connection.Server.address is no longer a plain attribute guarded on open "
            "connections")
