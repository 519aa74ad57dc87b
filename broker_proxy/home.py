"""Where broker-proxy keeps its state, so every command of one home finds the same files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, chosen: str | None) -> Home:
        """The home at ``chosen`` (``~`` expanded), else ~/.broker-proxy.

        The CLI chooses: --home, else $BROKER_PROXY_HOME (runtime/run_config.py home_setting).
        """
        return cls(Path(chosen or "~/.broker-proxy").expanduser().absolute())

    def ensure(self) -> Home:
        """Create the home 0700: it holds the vault, its key file and the audit key."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        return self

    @property
    def policy(self) -> Path:
        return self.root / "policy.yaml"

    @property
    def vault(self) -> Path:
        return self.root / "vault.bin"

    @property
    def vault_key(self) -> Path:
        return self.root / "vault.key"

    @property
    def grants_db(self) -> Path:
        return self.root / "grants.sqlite3"

    @property
    def audit_log(self) -> Path:
        return self.root / "audit.log"

    @property
    def audit_key(self) -> Path:
        return self.root / "audit.key"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def ca_record(self) -> Path:
        """Names the CA directory when `run --certs DIR` put it elsewhere than <home>/certs."""
        return self.root / "ca-dir"

    def ca_dir(self) -> Path:
        """This home's one CA directory: where `run --certs` made it, else <home>/certs.

        `ca path` and `env` read it too, so they never make a second CA that agents would
        trust in vain.
        """
        try:
            recorded = self.ca_record.read_text().strip()
        except OSError:
            return self.certs
        return Path(recorded) if recorded else self.certs

    @property
    def runtime(self) -> Path:
        """Addresses of the running proxy, written by `run` for `exec`, `env` and `grant`."""
        return self.root / "run.json"

    @property
    def admin_token(self) -> Path:
        """The admin API's bearer token, 0600, created by `run` at its first start."""
        return self.root / "admin.token"

    @property
    def upstream_ca_bundle(self) -> Path:
        return self.root / "upstream-ca-bundle.pem"
