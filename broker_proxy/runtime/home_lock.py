"""One `broker-proxy run` per home: an exclusive lock held for the life of the proxy.

Two proxies on one home would write one audit chain from two replica ids, and the second one's
exit would remove the first one's run.json, so `exec`, `env` and `grant issue` would lose or
misname the running proxy. flock(2) is released by the kernel when the process dies however it
dies, so a crash never leaves a stale lock; the PID written in the file only names the holder
in the refusal. The workers of `run --workers N` are started by the holder and take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Self

from broker_proxy.errors import BrokerError


class HomeBusy(BrokerError):
    """Another process holds the home's lock."""

    def __init__(self, home: Path, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "another process"
        super().__init__(f"another broker-proxy run ({holder}) is using the home {home}; stop "
                         "it first, or give this one its own --home")
        self.pid = pid


class HomeLock:
    """`<home>/run.lock`, flocked exclusively; `release()` (or process exit) lets go."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, root: Path) -> Self:
        path = root / "run.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise HomeBusy(root, int(holder) if holder.isdigit() else None) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        os.close(self._fd)
        self._fd = -1
