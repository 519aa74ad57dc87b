"""A rotation takes effect at once: the proxy watches the vault and confirms it scrubs for it.

`broker-proxy secret set NAME` rewrites the vault file. Every proxy process of the home (`run`
and each of its workers) reads the file's first 16 bytes (magic + the nonce drawn for every
write, so they change with every write and say nothing about the contents) every ``interval``
seconds. When they change, it re-resolves the vault's secrets off the event loop
(``GrantScrubValues.refresh``: the new value, and the replaced one as retired), compiles the new
values' patterns, and only then writes ``<home>/scrub-acks/<pid>`` holding those 16 bytes in hex.
`secret set` waits (bounded) until the ack of every live proxy process names the vault it
wrote: from then on every new answer, every long poll answered later and every live stream at
its next chunk or message is scrubbed for the new value.

An ack file is written at start and removed at stop; a process killed without removing it is
recognised as dead by its pid (``wait_for_proxies`` skips it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from broker_proxy.decision.broker import Broker
from broker_proxy.home import Home
from broker_proxy.scrubbing.scrubber import Scrubber
from broker_proxy.secrets.vault import MAGIC, NONCE_BYTES, write_file_atomically

log = logging.getLogger("broker_proxy")

HEADER_BYTES = len(MAGIC) + NONCE_BYTES
NO_VAULT = "none"
POLL_SECONDS = 0.1


def vault_mark(vault: Path) -> str:
    """What identifies one write of the vault: its magic and nonce in hex ("none": no vault)."""
    try:
        with open(vault, "rb") as file:
            return file.read(HEADER_BYTES).hex() or NO_VAULT
    except FileNotFoundError:
        return NO_VAULT


def acks_dir(home: Home) -> Path:
    return home.root / "scrub-acks"


class VaultWatch:
    """One proxy process's watcher thread (see the module docstring)."""

    def __init__(self, broker: Broker, home: Home, *, interval: float = POLL_SECONDS) -> None:
        self._broker = broker
        self._home = home
        self._interval = interval
        self._stop = threading.Event()
        self._ack = acks_dir(home) / str(os.getpid())
        self._mark: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> VaultWatch:
        acks_dir(self._home).mkdir(mode=0o700, parents=True, exist_ok=True)
        self._check()  # nothing is cached yet: this only writes the first ack
        self._thread = threading.Thread(target=self._run, name="vault-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._ack.unlink()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._check()
            except Exception as error:  # keep watching; the next write is tried again
                log.warning("vault watch: %s", type(error).__name__)

    def _check(self) -> None:
        mark = vault_mark(self._home.vault)
        if mark == self._mark:
            return
        if self._mark is not None:
            fresh = self._broker.scrub_values.refresh(self._broker.policy.policy)
            # Compile the new values now, so no answer's first chunk pays 20-35 ms on the loop.
            Scrubber({label: (value, "x") for label, value in fresh.items()})
        write_file_atomically(self._ack, mark.encode())
        self._mark = mark


@dataclass(frozen=True, slots=True)
class ProxyAnswers:
    confirmed: list[int]  # pids that scrub for the vault as written
    silent: list[int]  # live pids that did not confirm in time


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_for_proxies(home: Home, timeout: float,
                     sleep: Callable[[float], None] = time.sleep) -> ProxyAnswers:
    """Wait until every live proxy process of ``home`` acked the vault as it is now."""
    deadline = time.monotonic() + timeout
    while True:
        mark = vault_mark(home.vault)
        confirmed: list[int] = []
        silent: list[int] = []
        try:
            entries = list(acks_dir(home).iterdir())
        except FileNotFoundError:
            entries = []
        for entry in entries:
            if not entry.name.isdigit() or not _alive(int(entry.name)):
                continue
            try:
                acked = entry.read_text().strip()
            except OSError:
                continue
            (confirmed if acked == mark else silent).append(int(entry.name))
        if not silent or time.monotonic() >= deadline:
            return ProxyAnswers(sorted(confirmed), sorted(silent))
        sleep(0.05)
