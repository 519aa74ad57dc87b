"""`broker-proxy run`: the proxy itself."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from broker_proxy.audit.errors import AuditError
from broker_proxy.cli.common import add_policy_option, home_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.home import Home
from broker_proxy.policy.resolve_pins import PinError, ResolvePins
from broker_proxy.runtime.assembly import open_broker

# Long enough to look back at a month of grants with `grant list`/`show` (an incident is rarely
# reviewed later than that; the audit log keeps everything regardless), short enough that the
# store stays at a month of traffic: about 300,000 rows at 10,000 grants a day.
DEFAULT_GRANT_RETENTION = "30d"

if TYPE_CHECKING:
    from broker_proxy.addons.connection_limits import Deadlines

if TYPE_CHECKING:
    from broker_proxy.audit.otlp import OtlpShipper
    from broker_proxy.decision.broker import Broker


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    run.add_argument("--workers", type=int, default=1, metavar="N",
                     help="proxy processes sharing the listening port (default 1); the first "
                     "serves metrics and the admin API")
    run.add_argument("--worker-of-group", action="store_true", help=argparse.SUPPRESS)
    run.add_argument("--certs", metavar="DIR",
                     help="directory of the proxy's CA (default <home>/certs)")
    run.add_argument("--upstream-ca", metavar="PEM", action="append", default=[],
                     help="also trust this CA for upstream servers (private APIs, tests)")
    run.add_argument("--resolve", metavar="HOST[:PORT]=IP[:PORT]", action="append", default=[],
                     help="connect to IP (and PORT) for HOST (and PORT), like curl's "
                     "--connect-to: split DNS, a local stand-in for an API; repeatable")
    add_store_option(run)
    run.add_argument("--replica-id", metavar="ID",
                     help="name of this replica in every audit record (default: one made "
                     "once and kept in <home>/replica.id)")
    run.add_argument("--audit-max-bytes", type=_audit_max_bytes, default=None, metavar="BYTES",
                     help="rotate the audit log when it reaches this size (default: never; "
                     "at least 4096; K/M/G suffixes)")
    run.add_argument("--audit-checkpoint-every", default="5m", metavar="DURATION",
                     help="write a signed audit checkpoint this often while the log grows "
                     "(default 5m; 'off' turns checkpoints off)")
    run.add_argument("--audit-checkpoint-records", type=int, default=1000, metavar="N",
                     help="also write one after every N records (default 1000; 0: by time only)")
    run.add_argument("--audit-checkpoint-copy", action="append", default=[], metavar="FILE",
                     help="also append every checkpoint to FILE (another disk or machine), "
                     "so a log cut together with <home>/audit.checkpoints is still caught; "
                     "repeatable")
    run.add_argument("--request-head-timeout", default="30s", metavar="DURATION",
                     help="a client must send a whole request head within this long of "
                     "connecting or of its last answer (default 30s)")
    run.add_argument("--upstream-connect-timeout", default="10s", metavar="DURATION",
                     help="give up connecting upstream after this long, and again on the "
                     "upstream TLS handshake; the agent gets 502 upstream_error (default 10s)")
    run.add_argument("--upstream-read-timeout", default="5m", metavar="DURATION",
                     help="give up waiting for an upstream's answer (its headers) this long "
                     "after the request was decided; the agent gets 502 upstream_error, kind "
                     "read_timeout (default 5m)")
    run.add_argument("--idle-timeout", default="10m", metavar="DURATION",
                     help="close a connection with no byte either way for this long, e.g. an "
                     "upstream gone silent (default 10m: LLM answers can pause for minutes)")
    run.add_argument("--otlp-endpoint", default=None, metavar="URL",
                     help="also send every audit record to this OTLP/HTTP collector, e.g. "
                     "http://127.0.0.1:4318 (from the log, on its own thread; default: off)")
    run.add_argument("--grant-retention", default=DEFAULT_GRANT_RETENTION, metavar="DURATION",
                     help="delete grants from the store this long after they ended (expired, "
                     "revoked or denied; a used-up grant ends at its expiry), a batch at a time, "
                     "each batch named in a grants_purged audit record; 'off' keeps them "
                     f"(default {DEFAULT_GRANT_RETENTION})")
    run.add_argument("--console-session-ttl", default="8h", metavar="DURATION",
                     help="how long a web console sign-in lasts (default 8h)")
    run.set_defaults(handler=run_command)


def grant_retention(text: str) -> timedelta | None:
    """`--grant-retention`: a positive duration, or None for 'off'."""
    from broker_proxy.durations import DurationError, parse_duration

    if text == "off":
        return None
    try:
        retention = parse_duration(text)
    except DurationError as error:
        raise CliError(f"--grant-retention: {error}") from None
    if retention <= timedelta(0):
        raise CliError(f"--grant-retention must be positive or 'off', got {text!r}")
    return retention


def _audit_max_bytes(text: str) -> int:
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) * scale < 4096:
        raise argparse.ArgumentTypeError(f"must be a size of at least 4096 bytes, got {text!r}")
    return int(digits) * scale


def _deadlines(args: argparse.Namespace) -> Deadlines:
    from broker_proxy.addons.connection_limits import Deadlines
    from broker_proxy.durations import DurationError, parse_duration

    seconds = {}
    for option in ("request_head_timeout", "upstream_connect_timeout", "upstream_read_timeout",
                   "idle_timeout"):
        text = getattr(args, option)
        try:
            seconds[option] = parse_duration(text).total_seconds()
        except DurationError as error:
            raise CliError(f"--{option.replace('_', '-')}: {error}") from None
        if seconds[option] <= 0:
            raise CliError(f"--{option.replace('_', '-')} must be positive, got {text!r}")
    return Deadlines(request_head=seconds["request_head_timeout"],
                     upstream_connect=seconds["upstream_connect_timeout"],
                     upstream_read=seconds["upstream_read_timeout"],
                     idle=seconds["idle_timeout"])


def parse_address(text: str, option: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise CliError(f"{option} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


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


def _share_metrics(workers: int, worker: bool) -> Path | None:
    """With workers, one metrics directory for the group (made and removed by the first)."""
    from broker_proxy.metrics import share_between_processes, shared_directory

    if worker:
        if (directory := shared_directory()) is not None:
            share_between_processes(directory)
        return None
    if workers < 2:
        return None
    directory = Path(tempfile.mkdtemp(prefix="broker-proxy-metrics-"))
    share_between_processes(directory)  # inherited by the workers through the environment
    return directory


def _start_otlp(broker: Broker, home: Home, endpoint: str, replica: str | None) -> OtlpShipper:
    """Ship the audit log to a collector; one process of a worker group does it."""
    # Imported here: the OpenTelemetry SDK is an optional extra, loaded only for this option.
    try:
        from broker_proxy.audit.otlp import OtlpShipper, logs_url
    except ImportError:
        raise CliError("--otlp-endpoint needs the OpenTelemetry SDK: "
                       "pip install 'broker-proxy[otlp]'") from None

    try:
        logs_url(endpoint)
    except ValueError as error:
        raise CliError(f"--otlp-endpoint: {error}") from None
    return OtlpShipper(home.audit_log, home.root / "otlp.position", endpoint,
                       on_sent=broker.metrics.otlp_records_sent.inc,
                       on_unsent=broker.metrics.otlp_records_unsent.inc,
                       instance=replica).start()



def home_certs(home: Home, explicit: str | None) -> Path:
    """The home's one CA directory; --certs moves it only while no CA exists where it is.

    Agents trust one CA per home: a second one made elsewhere would make `ca path` and `env`
    point them at a CA the proxy does not sign with.
    """
    current = home.ca_dir()
    certs = Path(explicit).absolute() if explicit else current
    if certs != current.absolute():
        from broker_proxy.cli.ca_cmd import CA_FILE

        if (current / CA_FILE).exists():
            raise CliError(f"this home's CA is in {current}; run with --certs {current} (or "
                           f"move it and remove {home.ca_record})")
        if certs != home.certs:
            home.ca_record.write_text(f"{certs}\n")
        else:
            home.ca_record.unlink(missing_ok=True)
    certs.mkdir(mode=0o700, parents=True, exist_ok=True)
    return certs


def _remove_own_runtime(home: Home) -> None:
    """run.json goes only with the process that wrote it, never another proxy's."""
    try:
        info = json.loads(home.runtime.read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("pid") == os.getpid():
        home.runtime.unlink(missing_ok=True)


def _record_stop(broker: Broker) -> None:
    """A stop on a log found cut or replaced writes nothing: its head state already names
    what was written, so the next start refuses until `audit recover` records the gap."""
    try:
        broker.audit.append("proxy_stopped", decision="allow", reason="stopped")
    except AuditError as error:
        print(f"broker-proxy: not recorded: proxy_stopped ({error})", file=sys.stderr,
              flush=True)


def run_command(args: argparse.Namespace) -> int:
    from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
    from broker_proxy.addons.runner import ProxySettings, patch_mitmproxy, serve
    from broker_proxy.runtime.memory_trace import install_from_env

    install_from_env()  # diagnostics only: nothing happens unless BROKER_PROXY_TRACEMALLOC is set

    try:  # before anything starts: refuse a mitmproxy whose patched internals changed
        patch_mitmproxy(with_reuse_port=args.workers > 1 or args.worker_of_group)
    except IncompatibleMitmproxy as error:
        raise CliError(str(error)) from None
    retention = grant_retention(args.grant_retention)
    home = home_of(args)
    listen = parse_address(args.listen, "--listen")
    if args.workers < 1:
        raise CliError(f"--workers must be at least 1, got {args.workers}")
    if args.workers > 1 and listen[1] == 0:
        from broker_proxy.runtime.local_ports import free_port

        listen = (listen[0], free_port(listen[0]))
    worker = args.worker_of_group
    from broker_proxy.runtime.home_lock import HomeBusy, HomeLock

    lock = None
    if not worker:  # the workers run under the lock their parent holds for the group
        home.ensure()
        try:
            lock = HomeLock.acquire(home.root)
        except HomeBusy as busy:
            raise CliError(str(busy)) from None
        except OSError as error:
            raise CliError(f"cannot lock the home {home.root}: {error.strerror}") from None
    metrics = None if args.metrics == "off" else parse_address(args.metrics, "--metrics")
    admin = None if args.admin == "off" else parse_address(args.admin, "--admin")
    try:
        resolve = ResolvePins.parse(args.resolve)
    except PinError as error:
        raise CliError(str(error)) from None
    from broker_proxy.secrets.oauth2 import UpstreamTrust

    # The bundle file is written below, before any request can make the proxy mint a token.
    trust = UpstreamTrust(home.upstream_ca_bundle if args.upstream_ca else None, resolve)
    shared_metrics = _share_metrics(args.workers, worker)  # before any metric exists
    policy_file = policy_file_of(args)
    if not policy_file.exists():
        raise CliError(f"no policy file at {policy_file}: start from an example with "
                       "`broker-proxy policy init` (it writes the package's copy of "
                       "policies/example.yaml there; --list shows the others), edit it and "
                       "`broker-proxy policy check` it, or pass --policy FILE")
    broker = open_broker(home, policy_file, store=args.store,
                         replica=args.replica_id, trust=trust)
    from broker_proxy.durations import parse_duration
    from broker_proxy.runtime.observability import start_observability

    every = args.audit_checkpoint_every
    # One process of a worker group sweeps grants and writes checkpoints, not each of them.
    observability = start_observability(
        broker, home, audit_max_bytes=args.audit_max_bytes,
        checkpoint_every=None if every == "off" else parse_duration(every).total_seconds(),
        checkpoint_records=args.audit_checkpoint_records or None,
        checkpoint_copies=tuple(Path(copy) for copy in args.audit_checkpoint_copy),
        grant_retention=retention,
    ) if not worker else None
    shipper = _start_otlp(broker, home, args.otlp_endpoint, args.replica_id) \
        if args.otlp_endpoint and not worker else None
    from broker_proxy.runtime.run_services import start_services

    try:
        session_ttl = parse_duration(args.console_session_ttl)
    except ValueError as error:
        raise CliError(f"--console-session-ttl: {error}") from None
    services = start_services(
        broker, home, policy_file_of(args), admin, session_ttl,
        checkpoint_problem=observability.checkpoint_problem if observability else None)
    certs = home_certs(home, args.certs)
    workers: list[WorkerGroup] = []  # the WorkerGroup of the extra workers, when there are any

    def on_reload() -> None:
        services.reloader.request_reload()
        if workers:
            import signal

            workers[0].send_signal(signal.SIGHUP)

    settings = ProxySettings(listen_host=listen[0], listen_port=listen[1], certs_dir=certs,
                             upstream_ca_bundle=upstream_bundle(home, args.upstream_ca),
                             resolve=resolve, on_reload_signal=on_reload,
                             reuse_port=args.workers > 1 or worker,
                             deadlines=_deadlines(args))
    if args.workers > 1:
        from broker_proxy.addons.ca import ensure_ca
        from broker_proxy.cli.workers import WorkerGroup, worker_command

        ensure_ca(certs)  # before the workers start, or each would make its own CA
        workers.append(WorkerGroup(worker_command(args.raw_argv, listen[0], listen[1]),
                                   args.workers - 1, broker.metrics.worker_restarts.inc))
    metrics_address = None
    if metrics is not None:
        try:
            metrics_address = f"{metrics[0]}:{broker.metrics.serve(*metrics)}"
        except OSError as error:
            raise CliError(f"cannot listen for metrics on {args.metrics}: "
                           f"{error.strerror}") from None

    def on_ready(host: str, port: int) -> None:
        from broker_proxy.runtime.gc_freeze import freeze_startup_objects

        freeze_startup_objects()  # before any traffic: see gc_freeze.py
        if worker:
            try:
                broker.audit.append("proxy_started", decision="allow", reason="worker_started",
                                    policy=broker.policy.policy.digest)
            except AuditError as error:
                # Listening already: keep the connections the kernel gives us and answer them
                # (every request needs a record, so each gets 503 audit_unavailable) rather
                # than exit and have them reset.
                print(f"broker-proxy worker: {error}; requests are answered 503",
                      file=sys.stderr, flush=True)
            return
        info = {"pid": os.getpid(), "listen": f"{host}:{port}", "metrics": metrics_address,
                "workers": args.workers,
                "ca": str(certs / "mitmproxy-ca-cert.pem")} | services.runtime_info()
        services.proxy_ready(f"{host}:{port}")
        home.runtime.write_text(json.dumps(info))
        broker.audit.append("proxy_started", decision="allow", reason="started",
                            policy=broker.policy.policy.digest)
        admin = info.get("admin")
        consoles = (f"admin API: http://{admin}, console: http://{admin}/ui/" if admin
                    else "admin API: off")
        print(f"broker-proxy listening on http://{host}:{port}"
              f" (metrics: {metrics_address or 'off'}, {consoles}, CA: {info['ca']})",
              flush=True)

    from broker_proxy.runtime.heap_trim import start_heap_trimmer, trim_interval_from_env

    trimmer = start_heap_trimmer(trim_interval_from_env())  # RSS follows memory in use
    try:
        asyncio.run(serve(broker, settings, on_ready))
    finally:
        if trimmer is not None:
            trimmer.stop()
        if workers:
            workers[0].stop()
        if shared_metrics is not None:
            shutil.rmtree(shared_metrics, ignore_errors=True)
        services.stop()
        if observability is not None:
            observability.watcher.stop()
        if not worker:
            _remove_own_runtime(home)
        _record_stop(broker)
        if observability is not None:
            observability.stop()  # the last signed checkpoint covers proxy_stopped
        if shipper is not None:
            shipper.stop()
        try:
            broker.audit.close()  # leaves the head state at the last record
        except AuditError as error:
            print(f"broker-proxy: {error}", file=sys.stderr, flush=True)
        if lock is not None:
            lock.release()
        print("broker-proxy stopped", file=sys.stderr, flush=True)
    return 0
