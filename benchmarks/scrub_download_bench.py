"""Scrubbing through the real proxy: downloads and server-sent events, with and without secrets.

    .venv/bin/python benchmarks/scrub_download_bench.py [--size-mib 100] [--rounds 2]
        [--events 200]                 (--size-mib 1024 for the 1 GB runs)

Every answer on a grant's connections is scrubbed for the grant's secrets, so what a grant holds
decides what a download costs. Three grants of one policy, against one local HTTPS upstream:

  nothing   a grant whose only secret is too short to scrub: the proxy streams the answer as is
  1 secret  a grant holding one secret: every byte is searched for all its encodings
  20        a grant holding twenty

Each downloads the same body (word-like text with one secret's value once per 64 KiB, so the
scrubbing grants replace it) with Content-Length, identity and gzip (one gzip stream made of
one compressed 1 MiB block, so the upstream costs nothing), ``--rounds`` times, alternating, through
``broker-proxy run``; the best round of each is kept and the ratio to "nothing" printed (the
machine is shared: compare in one run).
Then a server-sent event stream (one event every 5 ms, each stamped with the upstream's clock)
through the "nothing" and "1 secret" grants: p50 and p90 of the delay per event, and the added
p50. The proxy's peak RSS (VmHWM) closes.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import ssl
import statistics
import struct
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from tests.conftest import API_HOST, HOSTS, Upstreams, start_stack

BLOCK = 64 * 1024
MEMBER = 1 << 20
SECRETS = [f"s{i:02d}" for i in range(20)]


def bench_policy() -> str:
    names = [*SECRETS, "short"]
    lines = ["version: 1", "secrets:"]
    for name in names:
        lines += [f"  {name}:", f"    from: env:BENCH_{name.upper()}", "    destinations:",
                  "      - host: {api}", "        port: {api_port}"]
    lines += ["  api_key:", "    from: vault", "    destinations:", "      - host: {api}",
              "        port: {api_port}"]
    lines += ["agents:", "  bot:", f"    secrets: [{', '.join([*names, 'api_key'])}]",
              "    max_ttl: 1h", "network:", "  allow_addresses: [127.0.0.0/8]", ""]
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
        size = int(query["size"])
        packed = query.get("gzip") == "1"
        member = self.server.gzip_member if packed else self.server.block
        count = size // MEMBER
        head = tail = b""
        if packed:
            crc = 0
            for _ in range(count):
                crc = zlib.crc32(self.server.block, crc)
            head = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
            tail = (zlib.compressobj(6, zlib.DEFLATED, -15).flush()
                    + struct.pack("<II", crc, (count * MEMBER) & 0xFFFFFFFF))
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

    def _events(self, count: int, gap: float) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for n in range(count):
            event = b"id: %d\ndata: {\"sent\": %.6f}\n\n" % (n, time.perf_counter())
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
            time.sleep(gap)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block: bytes
    gzip_member: bytes


class BulkServer:
    """An HTTPS upstream that serves a fixed body fast, gzip-encoded or not, and an SSE stream."""

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


def _download(stack, token: str, size: int, packed: bool, value: bytes) -> float:
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


def _event_delays(stack, token: str, events: int) -> list[float]:
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
                sent = float(event.split(b'"sent": ')[1].rstrip(b"}"))
                delays.append((now - sent) * 1000)
    return delays[10:]  # the first events ride on the connection's start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--events", type=int, default=200)
    args = parser.parse_args()
    size = args.size_mib << 20
    values = {name: f"bench-{name}-" + secrets.token_urlsafe(24) for name in SECRETS}
    for name, value in values.items():
        os.environ[f"BENCH_{name.upper()}"] = value
    os.environ["BENCH_SHORT"] = "xyz"  # shorter than the scrubber looks for: nothing to scrub
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = write_pki(root / "pki", list(HOSTS))
        bulk = BulkServer(pki.cert_path, pki.key_path, values["s00"].encode()).start()
        others = [EchoServer(pki.cert_path, pki.key_path).start() for _ in range(4)]
        plain = EchoServer().start()
        upstreams = Upstreams(api=bulk, other=others[0], evil=others[1],  # type: ignore[arg-type]
                              egress=others[2], plain=plain, untrusted=others[3])
        stack = start_stack(root / "stack", pki, upstreams, policy=bench_policy())
        try:
            grants = {"nothing": stack.issue("short").token,
                      "1 secret": stack.issue("s00").token,
                      "20 secrets": stack.issue(*SECRETS).token}
            for packed in (False, True):
                label = "gzip" if packed else "identity"
                best: dict[str, float] = {}
                for _ in range(args.rounds):
                    for name, token in grants.items():
                        rate = _download(stack, token, size, packed, values["s00"].encode())
                        best[name] = max(best.get(name, 0.0), rate)
                for name in grants:
                    ratio = best[name] / best["nothing"]
                    print(f"download {args.size_mib} MiB {label:8s} {name:10s}: "
                          f"{best[name]:7.1f} MB/s  ratio to nothing {ratio:.2f}")
            nothing = _event_delays(stack, grants["nothing"], args.events)
            scrubbed = _event_delays(stack, grants["1 secret"], args.events)
            for name, delays in (("nothing", nothing), ("1 secret", scrubbed)):
                q = statistics.quantiles(delays, n=10)
                print(f"SSE delay per event, {name:8s}: p50 {statistics.median(delays):.2f} ms, "
                      f"p90 {q[8]:.2f} ms")
            print(f"SSE p50 added by scrubbing: "
                  f"{statistics.median(scrubbed) - statistics.median(nothing):+.2f} ms")
            print(f"proxy peak RSS (VmHWM): "
                  f"{memory_kib(stack.proxy.process.pid, 'VmHWM') / 1024:.0f} MiB")
        finally:
            stack.proxy.stop()
            bulk.stop()
            for server in [*others, plain]:
                server.stop()


if __name__ == "__main__":
    main()
