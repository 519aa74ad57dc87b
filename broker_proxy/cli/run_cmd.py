"""`broker-proxy run`: the proxy itself."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path

from broker_proxy.assembly import open_broker
from broker_proxy.cli.common import add_policy_option, home_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.home import Home


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "run",
        help="run the proxy",
        description="Run the credential-brokering proxy. Agents set HTTPS_PROXY to "
        "http://AGENT:GRANT_TOKEN@LISTEN. Refuses to start on a bad policy.",
    )
    add_policy_option(run)
    run.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                     help="where agents connect (default 127.0.0.1:8080; port 0 picks one)")
    run.add_argument("--metrics", default="127.0.0.1:9464", metavar="HOST:PORT",
                     help="Prometheus metrics address (default 127.0.0.1:9464; 'off' disables)")
    run.add_argument("--admin", default="127.0.0.1:8081", metavar="HOST:PORT",
                     help="admin API address (default 127.0.0.1:8081; 'off' disables); bearer "
                     "token in <home>/admin.token")
    run.add_argument("--certs", metavar="DIR",
                     help="directory of the proxy's CA (default <home>/certs)")
    run.add_argument("--upstream-ca", metavar="PEM", action="append", default=[],
                     help="also trust this CA for upstream servers (private APIs, tests)")
    run.add_argument("--resolve", metavar="HOST=IP", action="append", default=[],
                     help="connect to IP for HOST (split DNS, tests); repeatable")
    add_store_option(run)
    run.add_argument("--replica-id", metavar="ID",
                     help="name of this replica in every audit record (default: one made "
                     "once and kept in <home>/replica.id)")
    run.add_argument("--audit-max-bytes", type=_audit_max_bytes, default=None, metavar="BYTES",
                     help="rotate the audit log when it reaches this size (default: never; "
                     "at least 4096; K/M/G suffixes)")
    run.add_argument("--audit-checkpoint-every", default=None, metavar="DURATION",
                     help="write a signed audit checkpoint this often, e.g. 5m (default: off)")
    run.set_defaults(handler=run_command)


def _audit_max_bytes(text: str) -> int:
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) * scale < 4096:
        raise argparse.ArgumentTypeError(f"must be a size of at least 4096 bytes, got {text!r}")
    return int(digits) * scale


def parse_address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise CliError(f"{option} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse_resolve(pins: list[str]) -> dict[str, str]:
    from ipaddress import ip_address

    from broker_proxy.policy.destinations import HostError, canonical_host

    resolved: dict[str, str] = {}
    for pin in pins:
        host, sep, address = pin.partition("=")
        try:
            resolved[canonical_host(host)] = str(ip_address(address))
        except (HostError, ValueError):
            raise CliError(f"--resolve must be HOST=IP, got {pin!r}") from None
        if not sep:
            raise CliError(f"--resolve must be HOST=IP, got {pin!r}")
    return resolved


def upstream_bundle(home: Home, extra_cas: list[str]) -> Path | None:
    """mitmproxy's trusted-CA option replaces the system roots; we add to them instead."""
    if not extra_cas:
        return None
    import certifi

    parts = [Path(certifi.where()).read_bytes()]
    for pem in extra_cas:
        try:
            data = Path(pem).read_bytes()
        except OSError as error:
            raise CliError(f"--upstream-ca {pem}: {error.strerror}") from None
        if b"-----BEGIN CERTIFICATE-----" not in data:
            raise CliError(f"--upstream-ca {pem}: not a PEM certificate")
        parts.append(data)
    home.upstream_ca_bundle.write_bytes(b"\n".join(parts))
    return home.upstream_ca_bundle


def run_command(args: argparse.Namespace) -> int:
    from addons.runner import ProxySettings, serve

    home = home_of(args)
    listen = parse_address(args.listen, "--listen")
    metrics = None if args.metrics == "off" else parse_address(args.metrics, "--metrics")
    admin = None if args.admin == "off" else parse_address(args.admin, "--admin")
    resolve = parse_resolve(args.resolve)
    broker = open_broker(home, policy_file_of(args), store=args.store,
                         replica=args.replica_id)
    from broker_proxy.durations import parse_duration
    from broker_proxy.observability import start_observability

    every = args.audit_checkpoint_every
    observability = start_observability(
        broker, home, audit_max_bytes=args.audit_max_bytes,
        checkpoint_every=parse_duration(every).total_seconds() if every else None)
    from broker_proxy.run_services import start_services

    services = start_services(broker, home, policy_file_of(args), admin)
    certs = Path(args.certs).absolute() if args.certs else home.certs
    certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = ProxySettings(listen_host=listen[0], listen_port=listen[1], certs_dir=certs,
                             upstream_ca_bundle=upstream_bundle(home, args.upstream_ca),
                             resolve=resolve, on_reload_signal=services.reloader.request_reload)
    metrics_address = None
    if metrics is not None:
        try:
            metrics_address = f"{metrics[0]}:{broker.metrics.serve(*metrics)}"
        except OSError as error:
            raise CliError(f"cannot listen for metrics on {args.metrics}: "
                           f"{error.strerror}") from None

    def on_ready(host: str, port: int) -> None:
        info = {"pid": os.getpid(), "listen": f"{host}:{port}", "metrics": metrics_address,
                "ca": str(certs / "mitmproxy-ca-cert.pem")} | services.runtime_info()
        services.proxy_ready(f"{host}:{port}")
        home.runtime.write_text(json.dumps(info))
        broker.audit.append("proxy_started", decision="allow", reason="started",
                            policy=broker.policy.policy.digest)
        print(f"broker-proxy listening on http://{host}:{port}"
              f" (metrics: {metrics_address or 'off'}, CA: {info['ca']})", flush=True)

    try:
        asyncio.run(serve(broker, settings, on_ready))
    finally:
        services.stop()
        observability.stop()
        home.runtime.unlink(missing_ok=True)
        broker.audit.append("proxy_stopped", decision="allow", reason="stopped")
        broker.audit.close()
        print("broker-proxy stopped", file=sys.stderr, flush=True)
    return 0
