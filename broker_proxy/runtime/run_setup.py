"""Files and helpers `run` sets up in the home before it serves: the CA directory, the upstream
CA bundle, the OTLP shipper. Each refusal is a RunConfigError naming the option."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from broker_proxy.home import Home
from broker_proxy.runtime.run_config import RunConfig, RunConfigError

if TYPE_CHECKING:
    from broker_proxy.audit.otlp import OtlpShipper
    from broker_proxy.decision.broker import Broker

CA_FILE = "mitmproxy-ca-cert.pem"  # the certificate agents trust (cli/ca_cmd.py names it too)


def home_certs(home: Home, explicit: Path | str | None) -> Path:
    """The home's one CA directory; --certs moves it only while no CA exists where it is.

    Agents trust one CA per home: a second one made elsewhere would make `ca path` and `env`
    point them at a CA the proxy does not sign with.
    """
    current = home.ca_dir()
    certs = Path(explicit).absolute() if explicit else current
    if certs != current.absolute():
        if (current / CA_FILE).exists():
            raise RunConfigError(f"this home's CA is in {current}; run with --certs {current} "
                                 f"(or move it and remove {home.ca_record})")
        if certs != home.certs:
            home.ca_record.write_text(f"{certs}\n")
        else:
            home.ca_record.unlink(missing_ok=True)
    certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    return certs


def upstream_bundle(home: Home, extra_cas: tuple[Path, ...]) -> Path | None:
    """mitmproxy's trusted-CA option replaces the system roots; we add to them instead."""
    if not extra_cas:
        return None
    import certifi

    parts = [Path(certifi.where()).read_bytes()]
    for pem in extra_cas:
        try:
            data = Path(pem).read_bytes()
        except OSError as error:
            raise RunConfigError(f"--upstream-ca {pem}: {error.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise RunConfigError(f"--upstream-ca {pem}: not a PEM certificate")
        parts.append(data)
    home.upstream_ca_bundle.write_bytes(b"\n".join(parts))
    return home.upstream_ca_bundle


def start_otlp(broker: Broker, config: RunConfig) -> OtlpShipper:
    """Ship the audit log to a collector; one process of a worker group does it."""
    # Imported here: the OpenTelemetry SDK is an optional extra, loaded only for this option.
    try:
        from broker_proxy.audit.otlp import OtlpShipper, logs_url
    except ImportError:
        raise RunConfigError("--otlp-endpoint needs the OpenTelemetry SDK: "
                             "pip install 'broker-proxy[otlp]'") from None
    endpoint = config.otlp_endpoint or ""
    try:
        logs_url(endpoint)
    except ValueError as error:
        raise RunConfigError(f"--otlp-endpoint: {error}") from None
    home = config.home
    return OtlpShipper(home.audit_log, home.root / "otlp.position", endpoint,
                       on_sent=broker.metrics.otlp_records_sent.inc,
                       on_unsent=broker.metrics.otlp_records_unsent.inc,
                       instance=config.replica_id).start()


def remove_own_runtime(home: Home) -> None:
    """run.json goes only with the process that wrote it, never another proxy's."""
    runtime = home.runtime
    try:
        info = json.loads(runtime.read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("pid") == os.getpid():
        runtime.unlink(missing_ok=True)
