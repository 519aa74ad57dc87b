"""The mixed traffic of `soak.py --mixed`: paced requests of several kinds through one proxy.

Why paced and mixed: memory that grows per connection, per refused request or per audit rotation
hides behind a back-to-back keep-alive loop (few connections, one kind of request). Each tick
sends one request of the next kind in a fixed rotation, so every kind runs all through the soak
at a known share of the rate.
"""

from __future__ import annotations

import asyncio
import itertools
import ssl
import time
from dataclasses import dataclass, field

from benchmarks.loadgen import ProxySpec, Stream, Target, _read_response, _request_bytes

# One rotation of request kinds: (connection, placeholder, refused).
KINDS = (
    ("new", True, False), ("keepalive", True, False), ("keepalive", False, False),
    ("new", False, False), ("keepalive", True, False), ("new", True, False),
    ("keepalive", False, False), ("keepalive", True, True), ("new", True, False),
    ("keepalive", True, False),
)
KEEPALIVE_USES = 200  # a kept-alive tunnel is closed after this many requests, then replaced
# Idle longer than this, a kept tunnel is closed rather than reused: the test upstream hangs up on
# a connection idle for 10 s, and the proxy then closes the agent's side too.
KEEPALIVE_IDLE_SECONDS = 5.0


@dataclass(slots=True)
class Tally:
    sent: int = 0
    skipped: int = 0  # ticks dropped because max_in_flight requests were still unanswered
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    statuses: dict[int, int] = field(default_factory=dict)

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    def summary(self) -> str:
        codes = " ".join(f"{code}:{n}" for code, n in sorted(self.statuses.items()))
        kinds = ",".join(f"{kind}:{n}" for kind, n in sorted(self.error_kinds.items()))
        return (f"{codes} errors:{self.errors}" + (f" ({kinds})" if kinds else "")
                + (f" skipped:{self.skipped}" if self.skipped else ""))


async def _open_tunnel(proxy: ProxySpec, target: Target, context: ssl.SSLContext) -> Stream:
    """CONNECT and TLS without blocking the loop (loadgen's blocks on the CONNECT answer, which
    caps a paced client at the proxy's latency)."""
    reader, writer = await asyncio.open_connection(proxy.host, proxy.port)
    try:
        writer.write((f"CONNECT {target.host}:{target.port} HTTP/1.1\r\n"
                      f"Host: {target.host}:{target.port}\r\n"
                      f"Proxy-Authorization: {proxy.authorization()}\r\n\r\n").encode())
        answer = await reader.readuntil(b"\r\n\r\n")
        if b" 200 " not in answer.split(b"\r\n", 1)[0]:
            raise ConnectionError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
        await writer.start_tls(context, server_hostname=target.host)
    except BaseException:
        writer.close()
        raise
    return reader, writer


@dataclass(slots=True)
class _Kept:
    stream: Stream
    uses: int = 0
    idle_since: float = 0.0


class MixedTraffic:
    """Paced mixed requests; `granted` carries the placeholder, `refused` asks an ungranted path."""

    def __init__(self, proxy: ProxySpec, granted: Target, plain: Target, refused: Target,
                 ca_file: str) -> None:
        self.proxy = proxy
        self.requests = {(True, False): _request_bytes(granted, absolute=False, proxy_auth=None),
                         (False, False): _request_bytes(plain, absolute=False, proxy_auth=None),
                         (True, True): _request_bytes(refused, absolute=False, proxy_auth=None)}
        self.target = granted
        self.context = ssl.create_default_context(cafile=ca_file)
        self.idle: list[_Kept] = []
        self.tally = Tally()

    async def run(self, rate: float, seconds: float, max_in_flight: int = 64) -> None:
        """Start one request every 1/rate s (on a fixed schedule, not after the last answer).

        At most max_in_flight at once: a proxy slowed by a loaded machine would otherwise be
        handed ever more open connections, and their memory would read as a leak.
        """
        started = time.monotonic()
        pending: set[asyncio.Task[None]] = set()
        for index, kind in enumerate(itertools.cycle(KINDS)):
            due = started + index / rate
            if due - started >= seconds:
                break
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if len(pending) >= max_in_flight:
                self.tally.skipped += 1
                continue
            task = asyncio.create_task(self._one(*kind))
            pending.add(task)
            task.add_done_callback(pending.discard)
        if pending:
            await asyncio.wait(pending, timeout=30)
        for kept in self.idle:
            kept.stream[1].close()
        self.idle.clear()

    def _reusable(self) -> _Kept | None:
        """The most recently used kept tunnel; the stale ones (oldest first) are closed."""
        now = time.monotonic()
        while self.idle and now - self.idle[0].idle_since >= KEEPALIVE_IDLE_SECONDS:
            self.idle.pop(0).stream[1].close()
        return self.idle.pop() if self.idle else None

    async def _one(self, connection: str, placeholder: bool, refused: bool) -> None:
        self.tally.sent += 1
        request = self.requests[(placeholder, refused)]
        try:
            if connection == "new":
                reader, writer = await _open_tunnel(self.proxy, self.target, self.context)
                try:
                    writer.write(request)
                    self.tally.count(await _read_response(reader))
                finally:
                    writer.close()
                return
            kept = self._reusable() or _Kept(
                await _open_tunnel(self.proxy, self.target, self.context))
            try:
                kept.stream[1].write(request)
                self.tally.count(await _read_response(kept.stream[0]))
            except BaseException:
                kept.stream[1].close()
                raise
            kept.uses += 1
            if kept.uses >= KEEPALIVE_USES:
                kept.stream[1].close()
            else:
                kept.idle_since = time.monotonic()
                self.idle.append(kept)
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError,
                ValueError) as error:
            self.tally.errors += 1
            kind = type(error).__name__
            self.tally.error_kinds[kind] = self.tally.error_kinds.get(kind, 0) + 1
