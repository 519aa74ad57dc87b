"""The proxy's CA, created the way mitmproxy creates it so `run` and `ca path` agree."""

from __future__ import annotations

from pathlib import Path

from mitmproxy.certs import CertStore

CA_BASENAME = "mitmproxy"
CA_KEY_SIZE = 2048


def ensure_ca(certs_dir: Path) -> Path:
    certs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    CertStore.from_store(certs_dir, CA_BASENAME, CA_KEY_SIZE)
    return certs_dir / f"{CA_BASENAME}-ca-cert.pem"
