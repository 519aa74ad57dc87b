"""Response scrubbing: the scrubber's throughput, and the proxy's memory on a 1 GiB download.

    .venv/bin/python benchmarks/scrub_bench.py [--size-mib 1024] [--core-mib 100]

1. Core, no proxy: a 100 MB text body (a secret once per 64 KiB, at moving offsets) through
   ``StreamScrubber`` in 64 KiB chunks, for 1 and for 20 secrets (every encoding of each);
   then the same body gzip-compressed through ``StreamDecoder`` + ``StreamScrubber``, with its
   ratio to a bare ``zlib`` decompress, and to a bare decompress + compress (what re-encoding
   the scrubbed answer would cost at least), of the same body. Prints MB of decoded body per
   second of this process's CPU time (not wall time: steadier on a shared machine).
2. The real proxy (`broker-proxy run`) with a local HTTPS upstream: one client downloads a
   1 GiB response with Content-Length (ten times the proxy's 10 MB body_size_limit) without a
   secret (streamed and scanned: every answer on a grant is scrubbed for the grant's secrets,
   whether its request carried one or not), then one that carried a secret and reflects it in
   every 64 KiB (streamed and scrubbed). The proxy's RSS is sampled every 50 ms; a quarter-size
   download first shows that the peak does not grow with the body size.

Runs in about 1-3 minutes on 2 slow vCPUs (`make bench`); `make test` runs it with `--smoke`.
"""

from __future__ import annotations

import argparse
import gzip
import random
import secrets
import ssl
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

try:
    from isal import isal_zlib
except ImportError:  # the proxy decodes with zlib then
    isal_zlib = None  # type: ignore[assignment]

from benchmarks import smoke
from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.scrubbing.content_decoding import DecodeLimits, StreamDecoder
from broker_proxy.scrubbing.scrubber import Scrubber
from tests.conftest import API_HOST, HOSTS, Stack, Upstreams, start_stack
from tests.reflect_upstream import ReflectServer

PLACEHOLDER = "{{secret:api_key}}"
CHUNK = 64 * 1024


def text_body(size: int, value: bytes) -> bytes:
    """Word-like text (gzip shrinks it ~3x, like prose or JSON), the secret once per 64 KiB."""
    rng = random.Random(7)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9)))
             for _ in range(2000)]
    blocks = [b" ".join(rng.choices(words, k=CHUNK // 4))[:CHUNK] for _ in range(16)]
    parts = []
    for n in range(size // CHUNK):
        block = blocks[n % len(blocks)]
        at = (n * 7919) % (CHUNK - len(value))
        parts.append(block[:at] + value + block[at + len(value):])
    return b"".join(parts)


def _scrub_rate(scrubber: Scrubber, body: bytes, compressed: bytes | None) -> float:
    """MB/s of decoded body through (decoder +) StreamScrubber in 64 KiB chunks."""
    stream = scrubber.stream()
    decoder = StreamDecoder(["gzip"], DecodeLimits()) if compressed is not None else None
    data = compressed if compressed is not None else body
    started = time.process_time()
    for i in range(0, len(data), CHUNK):
        piece = data[i:i + CHUNK]
        stream.feed(decoder.feed(piece) if decoder else piece)
    if decoder:
        stream.feed(decoder.finish())
    stream.finish()
    return len(body) / (time.process_time() - started) / 1e6


def _rate(size: int, run: Callable[[], object]) -> float:
    started = time.process_time()
    run()
    return size / (time.process_time() - started) / 1e6


def core_throughput(size: int) -> None:
    """1 and 20 secrets, identity and gzip; gzip against bare zlib on the same body."""
    values = {f"k{i:02d}": "sk-bench-" + secrets.token_urlsafe(24) for i in range(20)}
    body = text_body(size, values["k00"].encode())
    compressed = gzip.compress(body, compresslevel=6)
    mb = size / 1e6
    inflate = _rate(size, lambda: zlib.decompress(compressed, wbits=31))
    # What a proxy that re-encoded a scrubbed answer would pay at least: inflate, then deflate.
    round_trip = _rate(size, lambda: zlib.compress(zlib.decompress(compressed, wbits=31), 6))
    print(f"bare zlib, {mb:.0f} MB text: decompress {inflate:7.1f} MB/s, decompress + "
          f"compress (level 6) {round_trip:7.1f} MB/s")
    if isal_zlib is not None:
        print(f"bare ISA-L decompress (the proxy's decoder): "
              f"{_rate(size, lambda: isal_zlib.decompress(compressed, wbits=31)):7.1f} MB/s")
    for count in (1, 20):
        scrubber = Scrubber({name: (value, "{{secret:" + name + "}}")
                             for name, value in list(values.items())[:count]})
        plain = _scrub_rate(scrubber, body, None)
        packed = _scrub_rate(scrubber, body, compressed)
        print(f"scrubber, {count:2d} secret(s), {mb:.0f} MB text: identity {plain:7.1f} MB/s, "
              f"gzip {packed:7.1f} MB/s (decode + scrub: {packed / inflate:.2f}x bare zlib "
              f"decompress, {packed / round_trip:.2f}x zlib decompress + compress)")


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, memory_kib(self.pid, "VmRSS"))
            time.sleep(0.05)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def download(stack: Stack, token: str, size: int, with_secret: bool) -> tuple[float, int, int]:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    url = f"https://{API_HOST}:{stack.upstreams.api.port}/v1/big"
    params = {"size": size, "length": 1, "secret": int(with_secret)}
    headers = {"X-Reflect": PLACEHOLDER} if with_secret else {}
    received = 0
    placeholders = 0
    assert stack.proxy.process is not None
    with RssSampler(stack.proxy.process.pid) as rss, httpx.Client(
            proxy=stack.proxy.proxy_url(token, "bot"), verify=context, timeout=120) as client:
        started = time.perf_counter()
        with client.stream("GET", url, params=params, headers=headers) as response:
            assert response.status_code == 200, response.status_code
            for chunk in response.iter_raw(CHUNK):
                received += len(chunk)
                placeholders += chunk.count(b"{{secret:")
                if with_secret:
                    assert stack.api_key.encode() not in chunk
        elapsed = time.perf_counter() - started
    return elapsed, received, rss.peak_kib


def proxy_memory(size: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = write_pki(root / "pki", list(HOSTS))
        reflect = ReflectServer(pki.cert_path, pki.key_path).start()
        others = [EchoServer(pki.cert_path, pki.key_path).start() for _ in range(4)]
        plain = EchoServer().start()
        upstreams = Upstreams(api=reflect, other=others[0], evil=others[1],  # type: ignore[arg-type]
                              egress=others[2], plain=plain, untrusted=others[3])
        stack = start_stack(root / "stack", pki, upstreams)
        try:
            token = stack.issue("api_key").token
            assert stack.proxy.process is not None
            baseline = memory_kib(stack.proxy.process.pid, "VmRSS")
            print(f"proxy RSS at rest: {baseline / 1024:.0f} MiB")
            for with_secret in (False, True):
                label = "with a secret (scrubbed)" if with_secret else "no secret (scanned)"
                for body in (size // 4, size):
                    elapsed, received, peak = download(stack, token, body, with_secret)
                    assert received >= body * 0.99
                    print(f"proxy, {body >> 20:5d} MiB, {label:25s}: peak RSS "
                          f"{peak / 1024:6.0f} MiB, {received / elapsed / 1e6:6.1f} MB/s "
                          "end to end")
        finally:
            stack.proxy.stop()
            reflect.stop()
            for server in [*others, plain]:
                server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--core-mib", type=int, default=100)
    parser.add_argument("--size-mib", type=int, default=1024)
    smoke.add_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.core_mib, args.size_mib = 1, 2
    core_throughput(args.core_mib * 1000 * 1000 // CHUNK * CHUNK)
    if args.size_mib:  # 0: the scrubber alone
        proxy_memory(args.size_mib << 20)


if __name__ == "__main__":
    main()
