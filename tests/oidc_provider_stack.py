"""A real OpenID provider for the sign-in tests: Node's `oidc-provider` (tests/oidc_provider/).

Installed once per lock file into a cache dir with `npm ci` (from a clean clone too) and started
per test module on a free port. No npm registry means the tests fail with one line; they never
skip in silence.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parent / "oidc_provider"
CLIENT_ID = "broker-console"


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "broker-proxy-tests"


def installed_provider() -> Path:
    """The provider's directory with node_modules, installed at most once per lock file."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node and npm are needed for the OpenID provider of the sign-in tests")
    lock = (SOURCE / "package-lock.json").read_bytes()
    target = _cache_root() / f"oidc-provider-{hashlib.sha256(lock).hexdigest()[:16]}"
    target.parent.mkdir(parents=True, exist_ok=True)
    # Parallel workers: one installs, the others wait for it.
    with open(target.parent / "oidc-provider.lock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        if not (target / "node_modules" / "oidc-provider" / "package.json").exists():
            target.mkdir(exist_ok=True)
            for name in ("package.json", "package-lock.json"):
                shutil.copy(SOURCE / name, target / name)
            done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts"],
                                  cwd=target, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                said = [line for line in done.stderr.splitlines()
                        if line.strip() and "complete log" not in line]
                pytest.fail(f"npm ci of tests/oidc_provider failed (is the npm registry "
                            f"reachable?): {(said or ['no output'])[0].strip()}")
    shutil.copy(SOURCE / "provider.mjs", target / "provider.mjs")
    return target


class OidcProvider:
    """One running provider; `configure` finishes it once the proxy's callback URL is known."""

    def __init__(self, directory: Path, log: Path) -> None:
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(["node", "provider.mjs"], cwd=directory,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self._log)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            self.stop()
            pytest.fail(f"the OpenID provider did not start: {log.read_text()[-300:]}")
        self.port = json.loads(line)["port"]
        self.issuer = f"http://127.0.0.1:{self.port}"

    def configure(self, redirect_uri: str, client_secret: str) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"redirect_uri": redirect_uri,
                                             "client_secret": client_secret}).encode() + b"\n")
        self.process.stdin.flush()
        ready = json.loads(self.process.stdout.readline())
        assert ready["issuer"] == self.issuer

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log.close()
