"""Starting and stopping a real `broker-proxy run` process.

The demo and the end-to-end tests drive the product exactly as an operator would: a separate
process, configured by its command line, found through the addresses it records in its home.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self
from urllib.parse import quote

from broker_proxy.devtools import prefork


class ProxyStartError(RuntimeError):
    """The proxy exited or never listened; the message carries the end of its log."""


class ProxyProcess:
    def __init__(
        self,
        home: Path,
        policy: Path,
        *,
        upstream_ca: Path | None = None,
        resolve: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.home = Path(home)
        self.policy = Path(policy)
        self.log_path = log_path or self.home.parent / f"{self.home.name}-proxy.log"
        args = [sys.executable, "-m", "broker_proxy.cli", "--home", str(self.home), "run",
                "--policy", str(self.policy), "--listen", "127.0.0.1:0",
                "--metrics", "127.0.0.1:0", "--admin", "127.0.0.1:0"]
        if upstream_ca is not None:
            args += ["--upstream-ca", str(upstream_ca)]
        for host, address in (resolve or {}).items():
            args += ["--resolve", f"{host}={address}"]
        self.args = [*args, *extra_args]
        self.env = dict(os.environ if env is None else env)
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, str] = {}

    def start(self, timeout: float = 30.0) -> Self:
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        runtime = self.home / "run.json"
        runtime.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            # Forked from a pre-imported zygote when the tests switched prefork on.
            self.process = prefork.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ProxyStartError(f"broker-proxy exited with {self.process.returncode}: "
                                      f"{self.log_tail()}")
            try:
                info = json.loads(runtime.read_text())
                if info.get("pid") == self.process.pid:
                    self.info = info
                    return self
            except (OSError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise ProxyStartError(f"broker-proxy did not listen within {timeout:.0f}s: "
                              f"{self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:])

    @property
    def host(self) -> str:
        return self.info["listen"].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.info["listen"].rsplit(":", 1)[1])

    @property
    def ca_path(self) -> Path:
        return Path(self.info["ca"])

    @property
    def metrics_url(self) -> str:
        return f"http://{self.info['metrics']}/metrics"

    @property
    def admin_url(self) -> str:
        return f"http://{self.info['admin']}"

    def proxy_url(self, token: str, agent: str = "agent") -> str:
        return f"http://{quote(agent, safe='')}:{quote(token, safe='')}@{self.info['listen']}"

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
