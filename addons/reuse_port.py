"""Let several worker processes listen on one port (SO_REUSEPORT).

mitmproxy binds its listener with `asyncio.start_server(handler, host, port)` and offers no
option for SO_REUSEPORT; in a worker process (and only there) the default is changed so the
kernel can spread connections across the workers.
"""

from __future__ import annotations

import asyncio
import functools

_original_start_server = asyncio.start_server


def enable_reuse_port() -> None:
    asyncio.start_server = functools.partial(_original_start_server, reuse_port=True)  # type: ignore[assignment]
