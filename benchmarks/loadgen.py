"""A small asyncio load generator for HTTP(S) through a forward proxy.

Why our own: the workloads need CONNECT with proxy credentials, TLS inside the tunnel and
keep-alive, a new tunnel per request, and plain-HTTP proxy requests, all from one tool with the
same accounting. wrk and hey cannot speak CONNECT. The client is deliberately minimal (no HTTP
library) so that its own CPU cost per request stays small and constant across setups.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Target:
    host: str  # the name the client asks for (CONNECT target, Host header, SNI)
    port: int
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    address: str = "127.0.0.1"  # where a direct (unproxied) client connects


@dataclass(frozen=True, slots=True)
class ProxySpec:
    host: str
    port: int
    user: str = "bench"
    token: str = ""

    def authorization(self) -> str:
        credentials = base64.b64encode(f"{self.user}:{self.token}".encode()).decode()
        return f"Basic {credentials}"


@dataclass(slots=True)
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    elapsed: float = 0.0

    @property
    def requests(self) -> int:
        return len(self.latencies)

    def percentile(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    @property
    def rate(self) -> float:
        return self.requests / self.elapsed if self.elapsed else 0.0


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    chunked = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value.strip())
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await _skip_trailers(reader)
                break
            await reader.readexactly(size + 2)
    elif length:
        await reader.readexactly(length)
    return status


async def _skip_trailers(reader: asyncio.StreamReader) -> None:
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass


def _request_bytes(target: Target, *, absolute: bool, proxy_auth: str | None) -> bytes:
    path = f"http://{target.host}:{target.port}{target.path}" if absolute else target.path
    lines = [f"GET {path} HTTP/1.1", f"Host: {target.host}:{target.port}"]
    lines += [f"{name}: {value}" for name, value in target.headers]
    if proxy_auth:
        lines.append(f"Proxy-Authorization: {proxy_auth}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _open_tunnel(proxy: ProxySpec | None, target: Target,
                       context: ssl.SSLContext) -> Stream:
    if proxy is None:
        return await asyncio.open_connection(target.address, target.port, ssl=context,
                                             server_hostname=target.host)
    sock = socket.create_connection((proxy.host, proxy.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connect = (f"CONNECT {target.host}:{target.port} HTTP/1.1\r\nHost: {target.host}:{target.port}"
               f"\r\nProxy-Authorization: {proxy.authorization()}\r\n\r\n").encode()
    sock.sendall(connect)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("proxy closed the CONNECT")
        answer += chunk
    if b" 200 " not in answer.split(b"\r\n", 1)[0]:
        raise ConnectionError(answer.split(b"\r\n", 1)[0].decode(errors="replace"))
    sock.setblocking(False)
    return await asyncio.open_connection(sock=sock, ssl=context, server_hostname=target.host)


async def _https_keepalive(proxy: ProxySpec | None, target: Target, context: ssl.SSLContext,
                           deadline: float, result: Result) -> None:
    request = _request_bytes(target, absolute=False, proxy_auth=None)
    while time.monotonic() < deadline:
        try:
            reader, writer = await _open_tunnel(proxy, target, context)
        except (OSError, ConnectionError, ssl.SSLError):
            result.errors += 1
            await asyncio.sleep(0.05)
            continue
        try:
            # At least one request on every connection opened: on a loaded machine a short
            # run could otherwise end while the first tunnel was still being set up.
            while True:
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if time.monotonic() >= deadline:
                    break
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            result.errors += 1
        finally:
            writer.close()


async def _https_new_connection(proxy: ProxySpec | None, target: Target,
                                context: ssl.SSLContext, deadline: float,
                                result: Result) -> None:
    request = _request_bytes(target, absolute=False, proxy_auth=None)
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            reader, writer = await _open_tunnel(proxy, target, context)
            writer.write(request)
            status = await _read_response(reader)
            writer.close()
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, ValueError):
            result.errors += 1
            continue
        result.latencies.append(time.perf_counter() - started)
        result.statuses[status] = result.statuses.get(status, 0) + 1


async def _plain_http(proxy: ProxySpec | None, target: Target, deadline: float,
                      result: Result) -> None:
    absolute = proxy is not None
    request = _request_bytes(target, absolute=absolute,
                             proxy_auth=proxy.authorization() if proxy else None)
    address = (proxy.host, proxy.port) if proxy else (target.address, target.port)
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection(*address)
        except OSError:
            result.errors += 1
            await asyncio.sleep(0.05)
            continue
        try:
            while True:  # at least one request per connection, as above
                started = time.perf_counter()
                writer.write(request)
                status = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if time.monotonic() >= deadline:
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.errors += 1
        finally:
            writer.close()


async def run_load(workload: str, proxy: ProxySpec | None, target: Target,
                   ca_file: str | None, *, concurrency: int, seconds: float) -> Result:
    """Drive one workload for `seconds` with `concurrency` clients; return what came back."""
    context = ssl.create_default_context(cafile=ca_file)
    result = Result()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    if workload == "https-keepalive":
        jobs = [_https_keepalive(proxy, target, context, deadline, result)
                for _ in range(concurrency)]
    elif workload == "https-new-connection":
        jobs = [_https_new_connection(proxy, target, context, deadline, result)
                for _ in range(concurrency)]
    elif workload == "http-proxy":
        jobs = [_plain_http(proxy, target, deadline, result) for _ in range(concurrency)]
    else:
        raise ValueError(f"unknown workload {workload!r}")
    await asyncio.gather(*jobs)
    result.elapsed = time.monotonic() - started
    return result


async def one_request(proxy: ProxySpec | None, target: Target, ca_file: str) -> int:
    """One HTTPS request through a tunnel of its own; its status (for checking a setup)."""
    context = ssl.create_default_context(cafile=ca_file)
    reader, writer = await _open_tunnel(proxy, target, context)
    try:
        writer.write(_request_bytes(target, absolute=False, proxy_auth=None))
        return await _read_response(reader)
    finally:
        writer.close()
