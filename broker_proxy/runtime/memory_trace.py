"""Diagnostic memory reports of a running proxy, for finding what grows over a soak.

Set BROKER_PROXY_TRACEMALLOC=PREFIX before `broker-proxy run`, then send SIGUSR2 whenever a
report is wanted. Each signal writes PREFIX-N.txt (N counting from 1): RSS, the C heap as glibc
sees it (in use and free-but-held, which tells a leak from fragmentation), Python's own block
count and the live objects per type (most numerous first). With
BROKER_PROXY_TRACEMALLOC_FRAMES=F (F > 0) tracemalloc also runs from start-up, keeping F frames,
and each signal writes PREFIX-N.snapshot; compare two with benchmarks/snapshot_diff.py.

Why this is safe to write: every figure is a size, a count, a type name or an allocation site
(file and line); no object's contents, so no secret value, header or body reaches the files.
Off unless the variable is set: tracing costs CPU (several times the proxy's) and memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import tracemalloc
from collections import Counter
from pathlib import Path

from broker_proxy.runtime.heap_trim import trims_done

ENV_PREFIX = "BROKER_PROXY_TRACEMALLOC"  # both read by runtime/run_config.py
ENV_FRAMES = "BROKER_PROXY_TRACEMALLOC_FRAMES"


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def c_heap() -> dict[str, int] | None:
    """glibc's mallinfo2 (None elsewhere): bytes in use, free but held, and mmapped."""
    name = ctypes.util.find_library("c")
    try:
        mallinfo2 = ctypes.CDLL(name).mallinfo2
    except (OSError, AttributeError, TypeError):
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return {"in_use": info.uordblks, "free_held": info.fordblks, "mmapped": info.hblkhd,
            "arena": info.arena}


def _malloc_info(path: Path) -> None:
    """glibc's per-arena statistics (sizes and counts only) as its own XML, if there is glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
    except (OSError, AttributeError, TypeError):
        return
    stream = libc.fopen(os.fsencode(path), b"w")
    if stream:
        libc.malloc_info(0, stream)
        libc.fclose(stream)


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class MemoryReporter:
    """Writes numbered reports next to a prefix; one call per signal."""

    def __init__(self, prefix: Path, *, snapshots: bool) -> None:
        self.prefix = prefix
        self.snapshots = snapshots
        self.count = 0

    def _path(self, suffix: str) -> Path:
        return self.prefix.with_name(f"{self.prefix.name}-{self.count}{suffix}")

    def write(self) -> None:
        self.count += 1
        rss_before_collect = _rss_kib()
        # What is left after a full collection is reachable, not garbage awaiting the collector.
        collected = gc.collect()
        lines = [f"rss_kib {rss_before_collect}", f"gc_collected {collected}",
                 f"python_blocks {sys.getallocatedblocks()}"]
        lines += [f"c_heap_{key} {value}" for key, value in (c_heap() or {}).items()]
        lines += [f"gc_gen{n} collections {stats['collections']} collected {stats['collected']}"
                  for n, stats in enumerate(gc.get_stats())]
        lines += [f"heap_trims {trims_done()}", f"gc_frozen {gc.get_freeze_count()}"]
        if tracemalloc.is_tracing():
            current, peak = tracemalloc.get_traced_memory()
            lines += [f"traced {current}", f"traced_peak {peak}",
                      f"tracemalloc_own {tracemalloc.get_tracemalloc_memory()}"]
        kinds = Counter(f"{type(obj).__module__}.{type(obj).__qualname__}"
                        for obj in gc.get_objects())
        lines += [f"objects {kind} {n}" for kind, n in kinds.most_common()]
        self._path(".txt").write_text("\n".join(lines) + "\n")
        _malloc_info(self._path(".malloc.xml"))
        if self.snapshots:
            snapshot = tracemalloc.take_snapshot().filter_traces(
                # The snapshot's own bookkeeping is not the proxy's memory.
                (tracemalloc.Filter(False, tracemalloc.__file__),))
            snapshot.dump(str(self._path(".snapshot")))


def install(prefix: str | None, frames: int = 0) -> MemoryReporter | None:
    """Bind SIGUSR2 (and start tracing) if a prefix is given; None, nothing done, if not.

    The values are RunConfig's tracemalloc fields (the variables are read by run_config.py).
    """
    if not prefix:
        return None
    if frames > 0:
        tracemalloc.start(frames)
    reporter = MemoryReporter(Path(prefix), snapshots=frames > 0)
    signal.signal(signal.SIGUSR2, lambda _signum, _frame: reporter.write())
    return reporter
