"""`broker-proxy run --workers N`: N proxy processes sharing one listening port.

mitmproxy runs on one core, so more throughput means more processes. Each worker binds the same
address with SO_REUSEPORT and the kernel spreads new connections across them. The workers share
what must be shared (grant store, audit log chain under flock, policy file, CA) and each checks
every request itself; only the first process serves metrics and the admin API and records
run.json, so other commands find one proxy.

The first process also supervises the others (``WorkerGroup``): a worker that dies (killed, out
of memory, a bug) is reaped, logged with how it ended, counted (``broker_worker_restarts``) and
started again after a backoff that doubles while it keeps dying (so a worker that cannot start,
say on a policy file that became invalid, costs one line per attempt, not a busy loop). A worker
checks everything that can refuse its start before it binds the port, so one that cannot start
never takes connections: the others answer them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

PR_SET_PDEATHSIG = 1
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 30.0
STEADY_S = 30.0  # a worker that ran this long starts its next backoff from the first step
WATCH_EVERY_S = 0.2

log = logging.getLogger("broker_proxy.workers")


def _die_with_parent() -> None:
    # A worker must not outlive the process that owns run.json, metrics and the admin API.
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def worker_command(argv: Sequence[str], host: str, port: int) -> list[str]:
    """The command line of one extra worker: the same as ours, pinned to the shared port."""
    overrides = ["--listen", f"{host}:{port}", "--metrics", "off", "--admin", "off",
                 "--workers", "1", "--worker-of-group"]
    return [sys.executable, "-m", "broker_proxy.cli", *argv, *overrides]


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)


def how_it_ended(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with status {returncode}"


class _Slot:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process: subprocess.Popen[bytes] | None = process
        self.started = time.monotonic()
        self.backoff = FIRST_BACKOFF_S
        self.restart_at: float | None = None


class WorkerGroup:
    """The extra workers, watched by one thread that reaps and restarts them."""

    def __init__(self, command: list[str], count: int,
                 on_restart: Callable[[], None] = lambda: None) -> None:
        self._command = command
        self._on_restart = on_restart
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # The watcher spawns the replacements: PR_SET_PDEATHSIG follows the thread that forked,
        # so the first ones are spawned there too and all end with it (at stop, or with us).
        self._slots: list[_Slot] = []
        self._count = count
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="broker-workers", daemon=True)
        self._thread.start()
        self._ready.wait()

    @property
    def processes(self) -> list[subprocess.Popen[bytes]]:
        with self._lock:
            return [slot.process for slot in self._slots if slot.process is not None]

    def _watch(self) -> None:
        with self._lock:
            self._slots = [_Slot(_spawn(self._command)) for _ in range(self._count)]
        self._ready.set()
        while not self._stopping.wait(WATCH_EVERY_S):
            with self._lock:
                for slot in self._slots:
                    try:
                        self._tend(slot)
                    except Exception as error:  # the watcher must outlive any one mishap
                        log.error("worker supervision failed: %s", type(error).__name__)
        self._terminate()

    def _tend(self, slot: _Slot) -> None:
        now = time.monotonic()
        if slot.process is not None:
            returncode = slot.process.poll()  # reaps it
            if returncode is None:
                return
            pid = slot.process.pid
            slot.process = None
            if now - slot.started >= STEADY_S:
                slot.backoff = FIRST_BACKOFF_S
            slot.restart_at = now + slot.backoff
            log.error("worker %d %s; starting another in %gs", pid, how_it_ended(returncode),
                      slot.backoff)
            slot.backoff = min(MAX_BACKOFF_S, slot.backoff * 2)
            return
        if slot.restart_at is not None and now >= slot.restart_at:
            try:
                slot.process = _spawn(self._command)
            except OSError as error:
                log.error("cannot start a worker: %s", error.strerror or error)
                slot.restart_at = now + slot.backoff
                return
            slot.started, slot.restart_at = now, None
            self._on_restart()
            log.warning("worker %d starting in place of the one that ended", slot.process.pid)

    def send_signal(self, signum: int) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signum)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=20)

    def _terminate(self) -> None:
        workers = self.processes
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
