"""Give the C heap's freed pages back to the system now and then.

Why: under mixed traffic the proxy's RSS crept up ~1.5 MB/min while its live memory did not
(Python objects and glibc's bytes in use stayed flat; see benchmarks/soak.py --mixed and
broker_proxy/runtime/memory_trace.py). What grew was memory glibc held *free* in the event loop's
arena: every connection allocates and frees TLS and HTTP buffers there, a few longer-lived blocks
(a kept-alive connection's state, an audit batch) land above the freed ones, and glibc only ever
returns the top of an arena on its own. So RSS followed the high-water mark of fragmented free
space, and every burst of concurrent connections raised it for good.

`malloc_trim(0)` releases every whole free page inside the arenas (MADV_DONTNEED), which turns that
held memory back into nothing; it takes a few milliseconds on this heap. A daemon thread calls it
every `interval` seconds: no request waits on it (the arena lock is held for the walk only).
Elsewhere than glibc there is no `malloc_trim` and nothing is started.

BROKER_PROXY_HEAP_TRIM_SECONDS sets the interval (default 30; 0 turns trimming off, for comparing
with and without in one soak, see benchmarks/soak.py --mixed --no-heap-trim).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
from collections.abc import Callable

log = logging.getLogger("broker_proxy")

TRIM_INTERVAL_SECONDS = 30.0
ENV_INTERVAL = "BROKER_PROXY_HEAP_TRIM_SECONDS"  # read by runtime/run_config.py

_trims_done = 0  # by every trimmer of this process, for the memory report


def trims_done() -> int:
    """How many trims this process has run (memory_trace reports it)."""
    return _trims_done


def glibc_trim() -> Callable[[], int] | None:
    """`malloc_trim(0)` of this process's C library, or None if it has none."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


class HeapTrimmer:
    """Calls the C library's trim every `interval` seconds until stopped."""

    def __init__(self, trim: Callable[[], int], interval: float = TRIM_INTERVAL_SECONDS) -> None:
        self._trim = trim
        self._interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heap-trim", daemon=True)
        self.trims = 0  # how many trims this trimmer ran

    def start(self) -> HeapTrimmer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _run(self) -> None:
        global _trims_done
        while not self._stopped.wait(self._interval):
            try:
                self._trim()
            except Exception as error:  # only an economy: its failure must not stop the proxy
                log.warning("heap trim failed: %s", type(error).__name__)
                return
            self.trims += 1
            _trims_done += 1


def start_heap_trimmer(interval: float = TRIM_INTERVAL_SECONDS) -> HeapTrimmer | None:
    """A started trimmer; None if `interval` is 0 or the C library has no malloc_trim."""
    trim = glibc_trim() if interval > 0 else None
    return HeapTrimmer(trim, interval).start() if trim is not None else None
