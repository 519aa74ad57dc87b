"""CPU time and peak memory of another process, from /proc (Linux)."""

from __future__ import annotations

import contextlib
import os


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (peak) in KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


def children(pid: int) -> list[int]:
    """Direct children of a process (the extra workers of `run --workers N`)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid:
            found.append(int(entry))
    return found


def group_cpu_seconds(pid: int) -> float:
    return cpu_seconds(pid) + sum(cpu_seconds(child) for child in children(pid))


def group_peak_kib(pid: int) -> int:
    return memory_kib(pid, "VmHWM") + sum(memory_kib(c, "VmHWM") for c in children(pid))


def group_rss_kib(pid: int) -> int:
    """VmRSS of a process and its direct children (workers, or Squid's certificate helpers)."""
    total = memory_kib(pid, "VmRSS")
    for child in children(pid):
        with contextlib.suppress(OSError, LookupError):  # it exited meanwhile
            total += memory_kib(child, "VmRSS")
    return total
