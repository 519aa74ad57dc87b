"""`broker-proxy run --workers N`: N proxy processes sharing one listening port.

mitmproxy runs on one core, so more throughput means more processes. Each worker binds the same
address with SO_REUSEPORT and the kernel spreads new connections across them. The workers share
what must be shared (grant store, audit log chain under flock, policy file, CA) and each checks
every request itself; only the first process serves metrics and the admin API and records
run.json, so other commands find one proxy.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import signal
import subprocess
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A worker must not outlive the process that owns run.json, metrics and the admin API.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn_workers(argv: Sequence[str], host: str, port: int, count: int
                  ) -> list[subprocess.Popen[bytes]]:
    """Start `count` extra workers: the same command line, pinned to the shared port."""
    overrides = ["--listen", f"{host}:{port}", "--metrics", "off", "--admin", "off",
                 "--workers", "1", "--worker-of-group"]
    command = [sys.executable, "-m", "broker_proxy.cli", *argv, *overrides]
    return [subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
            for _ in range(count)]


def stop_workers(workers: list[subprocess.Popen[bytes]]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()


def forward_signal(workers: list[subprocess.Popen[bytes]], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signum)
