"""Let several worker processes listen on one port (SO_REUSEPORT).

mitmproxy binds its listener with `asyncio.start_server(handler, host, port)` and offers no
option for SO_REUSEPORT; in a worker process (and only there) the default is changed so the
kernel can spread connections across the workers. ``check`` makes sure mitmproxy still binds
through ``asyncio.start_server`` (else the change would do nothing and every worker but one would
fail to bind, or worse, bind elsewhere) and that asyncio still takes ``reuse_port``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect

from broker_proxy.addons.mitmproxy_compat import require
from mitmproxy.proxy import mode_servers

_original_start_server = asyncio.start_server


def check() -> None:
    require("asyncio.start_server(" in inspect.getsource(mode_servers),
            "mitmproxy.proxy.mode_servers no longer listens through asyncio.start_server")
    require("reuse_port" in inspect.signature(asyncio.AbstractEventLoop.create_server).parameters,
            "asyncio's create_server takes no reuse_port")


def enable_reuse_port() -> None:
    check()
    if isinstance(asyncio.start_server, functools.partial):
        return
    asyncio.start_server = functools.partial(_original_start_server, reuse_port=True)
