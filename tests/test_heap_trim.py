"""The proxy gives freed C heap back to the system, so its RSS follows the memory it uses.

Under mixed traffic RSS crept up ~1.5 MB/min while live memory stayed flat: glibc kept the
freed TLS and HTTP buffers of closed connections in the event loop's arena (see
broker_proxy/runtime/heap_trim.py). These tests pin the two halves of the remedy: a trim really
returns a fragmented arena's free pages, and the trimmer keeps calling it until stopped.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from broker_proxy.runtime.heap_trim import (
    TRIM_INTERVAL_SECONDS,
    HeapTrimmer,
    glibc_trim,
    start_heap_trimmer,
)
from broker_proxy.runtime.run_config import heap_trim_seconds as trim_interval_from_env

ROOT = Path(__file__).resolve().parent.parent

# Run in a fresh interpreter: a test runner's own heap, already fragmented, makes the figures
# depend on what ran before. Sizes only are printed.
FRAGMENT_THEN_TRIM = """
import ctypes, ctypes.util
from broker_proxy.runtime.heap_trim import glibc_trim

BLOCK, BLOCKS = 64 * 1024, 400  # a TLS buffer's size: below the mmap threshold, in the arena

def rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
trim = glibc_trim()
# Big buffers, each followed by a small long-lived block: freeing the buffers leaves holes the
# arena does not give back on its own, as a closed connection's buffers do.
buffers, pins = [], []
for _ in range(BLOCKS):
    buffer = libc.malloc(BLOCK)
    ctypes.memset(buffer, 1, BLOCK)
    buffers.append(buffer)
    pins.append(libc.malloc(64))
before = rss_kib()
for buffer in buffers:
    libc.free(buffer)
after_free = rss_kib()
trim()
print(BLOCKS * BLOCK // 1024, before - after_free, after_free - rss_kib())
"""


def test_a_trim_returns_the_free_pages_of_a_fragmented_heap() -> None:
    if glibc_trim() is None:
        pytest.skip("not glibc: no malloc_trim, and nothing is started")
    figures = subprocess.run([sys.executable, "-c", FRAGMENT_THEN_TRIM], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout.split()
    freed, by_free, by_trim = (int(figure) for figure in figures)
    assert by_free < freed // 4, "the arena gave the holes back by itself: nothing to test"
    assert by_trim >= freed // 2, f"a trim gave back {by_trim} KiB of {freed} KiB held in holes"


def test_the_trimmer_trims_every_interval_until_stopped() -> None:
    calls = threading.Semaphore(0)
    trimmer = HeapTrimmer(lambda: calls.release() or 0, interval=0.01).start()
    try:
        for _ in range(3):
            assert calls.acquire(timeout=10), "the trimmer stopped trimming"
    finally:
        trimmer.stop()
    done = trimmer.trims
    assert done >= 3
    assert not calls.acquire(timeout=0.1) or trimmer.trims == done, "it trimmed after stop()"


def test_a_failing_trim_stops_the_trimmer_not_the_process() -> None:
    def broken() -> int:
        raise OSError("no trim here")

    trimmer = HeapTrimmer(broken, interval=0.01).start()
    trimmer._thread.join(timeout=10)
    assert not trimmer._thread.is_alive() and trimmer.trims == 0
    trimmer.stop()


def test_the_interval_comes_from_the_environment_and_zero_turns_it_off() -> None:
    assert trim_interval_from_env({}) == TRIM_INTERVAL_SECONDS
    assert trim_interval_from_env({"BROKER_PROXY_HEAP_TRIM_SECONDS": "2.5"}) == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        assert trim_interval_from_env({"BROKER_PROXY_HEAP_TRIM_SECONDS": bad}) == \
            TRIM_INTERVAL_SECONDS
    assert trim_interval_from_env({"BROKER_PROXY_HEAP_TRIM_SECONDS": "0"}) == 0
    assert start_heap_trimmer(0) is None
