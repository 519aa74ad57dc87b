"""Peak RSS and longest event-loop stall of `broker-proxy run` facing a request gzip bomb.

A ~510 KB gzip body (about 500 MiB of zeros) is POSTed through the proxy with no credentials,
while a probe sends small requests one after another and times each answer: the slowest probe
is the longest the proxy's event loop was unavailable. The proxy's peak RSS is its VmHWM.

    .venv/bin/python benchmarks/request_bomb.py                      # this checkout
    .venv/bin/python benchmarks/request_bomb.py --checkout /work/main # the proxy of another one
"""

from __future__ import annotations

import argparse
import base64
import os
import secrets
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke
from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.proxy_process import ProxyProcess
from tests.gzip_bomb import gzip_bomb

POLICY = """\
version: 1
secrets:
  key: {from: "env:BOMB_KEY", destinations: [{host: api.bomb.test}]}
agents:
  bot: {secrets: [key], max_ttl: 1h}
"""


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(raw)
        return sock.recv(200)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkout", help="run the proxy from this source tree")
    smoke.add_flag(parser)  # a 50 MiB bomb
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        policy = Path(root) / "policy.yaml"
        policy.write_text(POLICY)
        env = dict(os.environ, BOMB_KEY=secrets.token_urlsafe(24), BROKER_PROXY_MASTER_KEY=(
            base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()))
        if args.checkout:  # its modules first, and not the current directory's
            env |= {"PYTHONPATH": str(Path(args.checkout).absolute()), "PYTHONSAFEPATH": "1"}
        with ProxyProcess(Path(root) / "home", policy, env=env) as proxy:
            assert proxy.process is not None
            pid, port = proxy.process.pid, proxy.port
            probe = b"GET http://api.bomb.test/ HTTP/1.1\r\nHost: api.bomb.test\r\n\r\n"
            _exchange(port, probe)
            baseline = memory_kib(pid, "VmHWM")
            bomb = gzip_bomb(50 if args.smoke else 500)
            stalls: list[float] = []
            done = threading.Event()

            def probing() -> None:
                while not done.is_set():
                    started = time.monotonic()
                    _exchange(port, probe)
                    stalls.append(time.monotonic() - started)
                    time.sleep(0.01)

            prober = threading.Thread(target=probing)
            prober.start()
            started = time.monotonic()
            answer = _exchange(port, (
                b"POST http://api.bomb.test/upload HTTP/1.1\r\nHost: api.bomb.test\r\n"
                b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)) + bomb)
            took = time.monotonic() - started
            time.sleep(0.3)
            done.set()
            prober.join()
            print(f"bomb: {len(bomb) / 1000:.0f} KB gzip; answer {answer.split(b' ')[1].decode()}"
                  f" after {took:.2f} s")
            print(f"peak RSS: {baseline / 1024:.0f} MiB before, "
                  f"{memory_kib(pid, 'VmHWM') / 1024:.0f} MiB after")
            print(f"longest event-loop stall (slowest probe of {len(stalls)}): "
                  f"{max(stalls):.3f} s")


if __name__ == "__main__":
    main()
