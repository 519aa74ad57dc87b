"""Scrubbing through the real proxy: downloads, server-sent events and WebSocket messages.

    .venv/bin/python benchmarks/scrub_download_bench.py [--size-mib 100 [1024]] [--rounds 3]
        [--events 200] [--messages 200]

Every answer on a grant's connections is scrubbed for the grant's secrets, so what a grant holds
decides what a download costs. Three grants of one policy, against one local HTTPS upstream:

  nothing   a grant whose only secret is too short to scrub: its answers stream through as is
            (gzip stays encoded, Content-Length kept), like a grant without secrets
  1 secret  a grant holding one secret: every byte is searched for all its encodings
  20        a grant holding twenty

Each downloads the same body (word-like text with one secret's value once per 64 KiB, so the
scrubbing grants replace it) with Content-Length, identity and gzip (one gzip stream made of
one compressed 1 MiB block, so the upstream costs nothing), in ``--rounds`` interleaved rounds
through ``broker-proxy run`` (the order turns each round). Per case: the median MB/s of the
decoded body (and the range), the proxy's CPU time per decoded MB (its own process, not wall:
the steadier figure on a shared machine), its peak RSS during the downloads of that size, and
the ratio to "nothing" (median of the per-round ratios: a round's cases ran side by side).
One unmeasured 1 MiB download per grant comes first: a grant's first answer compiles its
values' patterns, a one-time cost that would otherwise land in the first round.
Then a server-sent event stream and a WebSocket stream (one event or message every 5 ms, each
stamped with the upstream's clock) through "nothing" and "1 secret", alternating: p50 and p99
of the delay per event and what scrubbing adds. The proxy's peak RSS (VmHWM) closes.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import wsproto
import wsproto.connection
import wsproto.events

from benchmarks import smoke
from benchmarks.proc_stats import cpu_seconds, memory_kib
from benchmarks.scrub_bench import RssSampler
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from tests.conftest import API_HOST, HOSTS, Stack, Upstreams, start_stack
from tests.security.raw_proxy import open_tunnel

BLOCK = 64 * 1024
MEMBER = 1 << 20
SECRETS = [f"s{i:02d}" for i in range(20)]
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def bench_policy(shared_host: bool = False) -> str:
    """Answers are scrubbed for the grant's secrets and for every secret the policy may send to
    the answering host. So that the grant alone decides the cost (the three cases), only
    "short" goes to the download's host; the others go to another host, unless ``shared_host``
    (every secret at the download's host: every grant's answers pay for all of them). The
    download's host is on the egress list, so every grant may reach it."""
    names = [*SECRETS, "short"]
    lines = ["version: 1", "secrets:"]
    for name in names:
        host, port = ("{api}", "{api_port}") if shared_host or name == "short" else (
            "{other}", "{other_port}")
        lines += [f"  {name}:", f"    from: env:BENCH_{name.upper()}", "    destinations:",
                  f"      - host: {host}", f"        port: {port}"]
    lines += ["  api_key:", "    from: vault", "    destinations:",
              "      - host: {api}" if shared_host else "      - host: {other}",
              "        port: {api_port}" if shared_host else "        port: {other_port}"]
    lines += ["agents:", "  bot:", f"    secrets: [{', '.join([*names, 'api_key'])}]",
              "    max_ttl: 1h", "network:", "  allow_addresses: [127.0.0.0/8]"]
    if not shared_host:  # the grants whose secrets go elsewhere still download from it
        lines += ["egress:", "  allow: [{api}]"]
    lines.append("")
    # The policy is str.format()ed by start_stack: only the host placeholders stay single.
    return "\n".join(lines)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if url.path == "/v1/sse":
            self._events(int(query["events"]), float(query["gap_ms"]) / 1000)
            return
        if url.path == "/v1/ws":
            self._websocket(int(query["messages"]), float(query["gap_ms"]) / 1000)
            return
        size = int(query["size"])
        packed = query.get("gzip") == "1"
        member = self.server.gzip_member if packed else self.server.block
        count = size // MEMBER
        head = tail = b""
        if packed:
            head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
            tail = (zlib.compressobj(6, zlib.DEFLATED, -15).flush()
                    + struct.pack("<II", self.server.crc_of(count),
                                  (count * MEMBER) & 0xFFFFFFFF))
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        if packed:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(head) + len(member) * count + len(tail)))
        self.end_headers()
        self.wfile.write(head)
        for _ in range(count):
            self.wfile.write(member)
        self.wfile.write(tail)
        self.wfile.flush()

    def _line(self, n: int) -> bytes:
        # Word-like text as an API would stream it, stamped with the upstream's clock.
        words = self.server.block[(n * 4099) % MEMBER:][:120]
        return b'{"n": %d, "text": "%s", "sent": %.6f}' % (n, words, time.perf_counter())

    def _events(self, count: int, gap: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n in range(count):
            event = b"id: %d\ndata: %s\n\n" % (n, self._line(n))
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            time.sleep(gap)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _websocket(self, count: int, gap: float) -> None:
        key = self.headers["Sec-WebSocket-Key"].encode()
        digest = hashlib.sha1(key + _WS_GUID, usedforsecurity=False).digest()
        accept = base64.b64encode(digest).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        connection = wsproto.connection.Connection(wsproto.connection.ConnectionType.SERVER)
        for n in range(count):
            self.wfile.write(connection.send(wsproto.events.TextMessage(
                self._line(n).decode())))
            self.wfile.flush()
            time.sleep(gap)
        self.wfile.write(connection.send(wsproto.events.CloseConnection(1000)))
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block: bytes
    gzip_member: bytes
    _crcs: dict[int, int]

    def crc_of(self, count: int) -> int:
        """The CRC-32 of ``count`` blocks, computed once per count (not on every download)."""
        if count not in self._crcs:
            crc = 0
            for _ in range(count):
                crc = zlib.crc32(self.block, crc)
            self._crcs[count] = crc
        return self._crcs[count]


class BulkServer:
    """An HTTPS upstream that serves a fixed body fast, gzip-encoded or not, an SSE stream and
    a WebSocket stream."""

    def __init__(self, cert: Path, key: Path, value: bytes) -> None:
        # Word-like text (gzip shrinks it ~3x, like prose or JSON), the value once per block.
        rng = random.Random(7)
        words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
                 for _ in range(2000)]
        blocks = []
        for n in range(MEMBER // BLOCK):
            text = b" ".join(rng.choices(words, k=BLOCK // 4))[:BLOCK]
            at = (n * 7919) % (BLOCK - len(value))
            blocks.append(text[:at] + value + text[at + len(value):])
        self.block = b"".join(blocks)  # 1 MiB, served whole or gzip-compressed
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.block = self.block
        self._server._crcs = {}
        # One gzip stream of any length from one compressed block: after a full flush deflate
        # forgets its history, so the same block compresses to the same bytes every time.
        deflate = zlib.compressobj(6, zlib.DEFLATED, -15)
        self._server.gzip_member = deflate.compress(self.block) + deflate.flush(zlib.Z_FULL_FLUSH)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.port = self._server.server_address[1]

    def start(self) -> BulkServer:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _curl_download(stack: Stack, token: str, size: int, packed: bool) -> float:
    """The download by curl, its own process, body to /dev/null (not decoded by curl)."""
    url = (f"https://{API_HOST}:{stack.upstreams.api.port}/v1/big?size={size}"
           f"&gzip={int(packed)}")
    command = ["curl", "--silent", "--show-error", "--fail", "--output", "/dev/null",
               "--write-out", "%{size_download} %{time_total}", "--proxy",
               stack.proxy.proxy_url(token, "bot"), "--cacert", str(stack.proxy.ca_path),
               "--http1.1", url]
    if packed:
        command[-1:-1] = ["--header", "Accept-Encoding: gzip"]
    out = subprocess.run(command, check=True, capture_output=True, text=True,
                         timeout=600).stdout.split()
    received, elapsed = int(out[0]), float(out[1])
    assert received >= size * 0.99 or packed, received
    return size / elapsed / 1e6


def _download(stack: Stack, token: str, size: int, packed: bool) -> float:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/big"
    received = 0
    with httpx.Client(proxy=stack.proxy.proxy_url(token, "bot"), verify=context,
                      timeout=300) as client:
        started = time.perf_counter()
        headers = {"Accept-Encoding": "gzip"} if packed else {}
        with client.stream("GET", url, params={"size": size, "gzip": int(packed)},
                           headers=headers) as response:
            assert response.status_code == 200, response.status_code
            for chunk in response.iter_raw(BLOCK):
                received += len(chunk)
        elapsed = time.perf_counter() - started
    # MB/s of the body itself: a grant with nothing to scrub gets gzip passed on encoded, the
    # others get it decoded (the proxy does not re-encode), so bytes received would not compare.
    assert received >= size * 0.99 or packed, received
    return size / elapsed / 1e6


def _sse_delays(stack: Stack, token: str, events: int) -> list[float]:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/sse"
    delays: list[float] = []
    with httpx.Client(proxy=stack.proxy.proxy_url(token, "bot"), verify=context,
                      timeout=60) as client, client.stream(
            "GET", url, params={"events": events, "gap_ms": 5}) as response:
        buffer = b""
        for chunk in response.iter_raw():
            now = time.perf_counter()
            buffer += chunk
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                sent = json.loads(event.split(b"data: ", 1)[1])["sent"]
                delays.append((now - sent) * 1000)
    assert len(delays) == events, len(delays)
    return delays[10:]  # the first events ride on the connection's start


def _ws_delays(stack: Stack, token: str, messages: int) -> list[float]:
    port = stack.upstreams.api.port
    delays: list[float] = []
    with open_tunnel(stack, token, API_HOST, port) as tls:
        ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        tls.sendall(ws.send(wsproto.events.Request(
            host=f"{API_HOST}:{port}", target=f"/v1/ws?messages={messages}&gap_ms=5")))
        text = ""
        done = False
        while not done:
            data = tls.recv(65536)
            now = time.perf_counter()
            if not data:
                break
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, wsproto.events.TextMessage):
                    text += event.data
                    if event.message_finished:
                        delays.append((now - json.loads(text)["sent"]) * 1000)
                        text = ""
                elif isinstance(event, wsproto.events.CloseConnection):
                    tls.sendall(ws.send(event.response()))
                    done = True
    assert len(delays) == messages, len(delays)
    return delays[10:]


def _rounds(cases: dict[str, Callable[[], float]], rounds: int,
            measure: Callable[[Callable[[], float]], tuple[float, ...]]
            ) -> dict[str, list[tuple[float, ...]]]:
    """Run every case once per round, the order turning each round; what ``measure`` says."""
    names = list(cases)
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            results[name].append(measure(cases[name]))
    return results


def _downloads(stack: Stack, grants: dict[str, str], size_mib: int, rounds: int,
               client: str) -> None:
    size = size_mib << 20
    assert stack.proxy.process is not None
    pid = stack.proxy.process.pid
    at_rest = memory_kib(pid, "VmRSS")

    def measure(run: Callable[[], float]) -> tuple[float, ...]:
        before = cpu_seconds(pid)
        with RssSampler(pid) as rss:
            rate = run()
        cpu_ms_per_mb = (cpu_seconds(pid) - before) * 1000 / (size / 1e6)
        return rate, cpu_ms_per_mb, rss.peak_kib / 1024

    download = _curl_download if client == "curl" else _download
    for token in grants.values():
        # Warm-up, not measured: a grant's first answer compiles its values' patterns (tens
        # of ms per value, once per process), which the first round would otherwise carry.
        download(stack, token, 1 << 20, False)
    for packed in (False, True):
        label = "gzip" if packed else "identity"
        cases: dict[str, Callable[[], float]] = {
            name: functools.partial(download, stack, token, size, packed)
            for name, token in grants.items()}
        results = _rounds(cases, rounds, measure)
        base = results["nothing"]
        for name, runs in results.items():
            rates = [run[0] for run in runs]
            cpus = [run[1] for run in runs]
            ratio = statistics.median(run[0] / b[0] for run, b in zip(runs, base, strict=True))
            cpu_ratio = statistics.median(run[1] / b[1] for run, b in zip(runs, base, strict=True))
            print(f"download {size_mib} MiB {label:8s} {name:10s}: {statistics.median(rates):6.1f}"
                  f" MB/s ({min(rates):.0f}-{max(rates):.0f}), ratio to nothing {ratio:.2f}; "
                  f"proxy CPU {statistics.median(cpus):5.2f} ms/MB (x{cpu_ratio:.2f}); "
                  f"peak RSS {max(run[2] for run in runs):.0f} MiB")
    print(f"proxy RSS before the {size_mib} MiB downloads: {at_rest / 1024:.0f} MiB")


def _stream_delays(label: str, nothing: list[float], scrubbed: list[float]) -> None:
    for name, delays in (("nothing", nothing), ("1 secret", scrubbed)):
        q = statistics.quantiles(delays, n=100)
        print(f"{label} delay per message, {name:8s}: p50 {statistics.median(delays):.2f} ms, "
              f"p99 {q[98]:.2f} ms ({len(delays)} messages)")
    p99 = statistics.quantiles(scrubbed, n=100)[98] - statistics.quantiles(nothing, n=100)[98]
    print(f"{label} added by scrubbing: p50 "
          f"{statistics.median(scrubbed) - statistics.median(nothing):+.2f} ms, p99 {p99:+.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, nargs="+", default=[100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--events", type=int, default=200, help="SSE events per stream")
    parser.add_argument("--messages", type=int, default=200, help="WebSocket messages")
    parser.add_argument("--client", choices=["curl", "httpx"],
                        default="curl" if shutil.which("curl") else "httpx",
                        help="who downloads (default curl: a process of its own that reads "
                        "chunked framing in C; httpx shares this process with the upstream)")
    parser.add_argument("--shared-host", action="store_true",
                        help="every secret's destination is the download's host (so every "
                        "grant's answers there are scrubbed for all 22)")
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.size_mib, args.rounds, args.events, args.messages = [2], 1, 20, 20
    values = {name: f"bench-{name}-" + secrets.token_urlsafe(24) for name in SECRETS}
    for name, value in values.items():
        os.environ[f"BENCH_{name.upper()}"] = value
    os.environ["BENCH_SHORT"] = "xyz"  # shorter than the scrubber looks for: nothing to scrub
    print(f"load average at start: {os.getloadavg()[0]:.2f}; downloads by {args.client}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = write_pki(root / "pki", list(HOSTS))
        bulk = BulkServer(pki.cert_path, pki.key_path, values["s00"].encode()).start()
        others = [EchoServer(pki.cert_path, pki.key_path).start() for _ in range(4)]
        plain = EchoServer().start()
        upstreams = Upstreams(api=bulk, other=others[0], evil=others[1],  # type: ignore[arg-type]
                              egress=others[2], plain=plain, untrusted=others[3])
        stack = start_stack(root / "stack", pki, upstreams,
                            policy=bench_policy(args.shared_host))
        try:
            grants = {"nothing": stack.issue("short").token,
                      "1 secret": stack.issue("s00").token,
                      "20 secrets": stack.issue(*SECRETS).token}
            for size_mib in args.size_mib:
                _downloads(stack, grants, size_mib, args.rounds, args.client)
            streams: dict[str, Callable[[str], list[float]]] = {
                "SSE": lambda token: _sse_delays(stack, token, args.events),
                "WebSocket": lambda token: _ws_delays(stack, token, args.messages)}
            for label, stream in streams.items():
                pooled: dict[str, list[float]] = {"nothing": [], "1 secret": []}
                for _ in range(2):  # alternating, pooled
                    for name in pooled:
                        pooled[name] += stream(grants[name])
                _stream_delays(label, pooled["nothing"], pooled["1 secret"])
            assert stack.proxy.process is not None
            print(f"proxy peak RSS (VmHWM): "
                  f"{memory_kib(stack.proxy.process.pid, 'VmHWM') / 1024:.0f} MiB; "
                  f"load average at the end: {os.getloadavg()[0]:.2f}")
        finally:
            stack.proxy.stop()
            bulk.stop()
            for server in [*others, plain]:
                server.stop()


if __name__ == "__main__":
    main()
