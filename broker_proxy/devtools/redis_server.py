"""A private, throw-away `redis-server` for tests and benchmarks.

Runs on a port of its own on 127.0.0.1, keeps nothing on disk (`--save "" --appendonly no`),
and can be stopped and started again on the same port, which is how the tests show that brokers
fail closed while Redis is gone and recover by themselves when it is back. It never touches a
Redis it did not start (such as a system one on 6379).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Self

from broker_proxy.runtime.local_ports import free_port

_FALLBACK_BINARY = Path("/usr/bin/redis-server")


class RedisServerError(RuntimeError):
    """redis-server is missing, exited, or never answered."""


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    if _FALLBACK_BINARY.exists():
        return str(_FALLBACK_BINARY)
    raise RedisServerError(
        "redis-server is not installed (apt-get install -y redis-server); the Redis grant "
        "store tests need it"
    )


class RedisServer:
    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"redis-{self.port}.log"

    def start(self, timeout: float = 10.0) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                "--daemonize", "no", "--logfile", str(self.log_path)]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisServerError(f"redis-server exited with {self.process.returncode} "
                                       f"on port {self.port}; see {self.log_path}")
            if self.answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise RedisServerError(f"redis-server did not answer on port {self.port} "
                               f"within {timeout:.0f}s")

    def answers(self) -> bool:
        """True when something on the port says +PONG to PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as conn:
                conn.sendall(b"PING\r\n")
                return conn.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
