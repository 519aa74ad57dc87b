"""The running proxy as one object: built from a RunConfig, started and stopped in one order.

`BrokerProcess` starts the stages named in ``STAGES``, in that order, each registering its own
stop on one ``ExitStack``; stopping unwinds that stack, so the teardown is the start order
reversed, also when a stage fails half-way through start-up (what started is stopped, the error
goes to the caller). Both entry points use it: `broker-proxy run` with every stage, the
`mitmdump -s` script with the stages of ``MITMDUMP_OFF`` switched off (mitmdump owns the
listener and the process; the script has no lock, workers or side services).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from broker_proxy.addons.ca import ensure_ca
from broker_proxy.addons.connection_limits import Deadlines
from broker_proxy.addons.runner import ProxySettings, patch_mitmproxy, serve
from broker_proxy.audit.errors import AuditError
from broker_proxy.decision.broker import Broker
from broker_proxy.metrics import share_between_processes, shared_directory
from broker_proxy.policy.resolve_pins import ResolvePins
from broker_proxy.runtime import gc_freeze, heap_trim, memory_trace
from broker_proxy.runtime.assembly import open_broker
from broker_proxy.runtime.home_lock import HomeBusy, HomeLock
from broker_proxy.runtime.local_ports import free_port
from broker_proxy.runtime.observability import Observability, start_observability
from broker_proxy.runtime.run_config import RunConfig, RunConfigError
from broker_proxy.runtime.run_services import RunServices, start_services
from broker_proxy.runtime.run_setup import (
    home_certs,
    remove_own_runtime,
    start_otlp,
    upstream_bundle,
)
from broker_proxy.runtime.workers import WorkerGroup, worker_command
from broker_proxy.secrets.oauth2 import UpstreamTrust

# Start order; the stop order is its reverse. Why this order: the lock before anything touches
# the home; the shared metrics directory before any metric exists; the broker (audit log
# closed last but for the lock) before what writes records; `proxy_stopped` recorded after
# the services and the grant watcher stopped writing, before the last signed checkpoint.
STAGES = (
    "memory_trace",  # SIGUSR2 memory reports ($BROKER_PROXY_TRACEMALLOC)
    "lock",  # <home>/run.lock: one `run` per home (a group's workers run under the first's)
    "shared_metrics",  # one metrics directory for a worker group
    "broker",  # policy, grant store, audit log, secrets
    "otlp",  # --otlp-endpoint: ship the audit log
    "observability",  # rotation, checkpoints, grant watcher (one process of a group)
    "stop_record",  # `proxy_stopped` at the end, once the proxy served
    "run_json",  # <home>/run.json, removed by the process that wrote it
    "services",  # admin API and console, policy reloader, vault watcher
    "certs",  # the home's CA directory
    "workers",  # --workers N: the other N-1 processes, supervised
    "metrics",  # the Prometheus listener
    "heap_trim",  # give freed C heap back
)

# What the `mitmdump -s` script cannot run, by name. mitmdump owns the process and its listener
# (the script never calls `serve`), its CA and its options, so the script runs the broker only.
MITMDUMP_OFF = frozenset({
    "memory_trace", "heap_trim",  # the process's memory is mitmdump's
    "lock", "run_json",  # a `broker-proxy run` may be serving this home: never take it over
    "shared_metrics", "workers", "metrics",  # one mitmdump process, no metrics listener
    "otlp", "observability", "stop_record", "services",  # no side threads or admin API
    # mitmdump's confdir is its CA; its ssl_verify_upstream_trusted_ca is the whole upstream
    # bundle, used as given (no bundle written into the home)
    "certs",
})
WORKER_OFF = frozenset({"lock", "observability", "otlp", "run_json"})  # a group's extra workers


class BrokerProcess:
    """Builds the broker, its addons' settings, services, workers and locks from a RunConfig."""

    def __init__(self, config: RunConfig, *, off: frozenset[str] = frozenset(),
                 argv: Sequence[str] = ()) -> None:
        unknown = off - set(STAGES)
        if unknown or "broker" in off:
            raise ValueError(f"no such stages: {sorted(unknown)}" if unknown
                             else "the broker stage cannot be switched off")
        self.config = config
        self.off = off | (WORKER_OFF if config.worker_of_group else frozenset())
        self.argv = list(argv)  # `run`'s own arguments, for the workers it starts
        self._stack = contextlib.ExitStack()
        self.listen = config.listen
        self.broker: Broker | None = None
        self.observability: Observability | None = None
        self.services: RunServices | None = None
        self.certs: Path = config.home.certs  # where stage `certs` finds it
        self.workers: WorkerGroup | None = None
        self.metrics_address: str | None = None
        self.serving = False

    # --- start and stop

    def start(self) -> Broker:
        """Every stage not switched off, in order; on a failure, what started is stopped."""
        with contextlib.ExitStack() as starting:
            starting.push(self._stack)
            for stage in STAGES:
                if stage not in self.off:
                    getattr(self, f"_start_{stage}")()
            starting.pop_all()
        return self.running_broker  # the broker stage is never off

    def stop(self) -> None:
        self._stack.close()

    def serve(self, on_ready: Callable[[str, int], None]) -> None:
        """Run mitmproxy with the broker's addons until SIGINT/SIGTERM, then stop everything."""
        with self._stack:
            settings = self.proxy_settings()
            self.serving = True
            asyncio.run(serve(self.running_broker, settings, on_ready))

    @property
    def running_broker(self) -> Broker:
        if self.broker is None:
            raise RuntimeError("the broker process has not started")
        return self.broker

    def proxy_settings(self) -> ProxySettings:
        config = self.config
        return ProxySettings(
            listen_host=self.listen[0], listen_port=self.listen[1], certs_dir=self.certs,
            upstream_ca_bundle=self._bundle, resolve=self.resolve,
            body_size_limit=config.body_size_limit,
            connection_strategy=config.connection_strategy,
            validate_inbound_headers=config.validate_inbound_headers,
            ssl_insecure=config.ssl_insecure, termlog_verbosity=config.termlog_verbosity,
            on_reload_signal=self.reload,
            reuse_port=self.reuse_port, deadlines=self.deadlines)

    @property
    def resolve(self) -> ResolvePins:
        return ResolvePins.parse(list(self.config.resolve))

    @property
    def reuse_port(self) -> bool:
        return self.config.workers > 1 or self.config.worker_of_group

    @property
    def deadlines(self) -> Deadlines:
        config = self.config
        return Deadlines(request_head=config.request_head_timeout,
                         upstream_connect=config.upstream_connect_timeout,
                         upstream_read=config.upstream_read_timeout, idle=config.idle_timeout)

    def reload(self) -> None:
        """SIGHUP: reload the policy here and in every worker."""
        if self.services is not None:
            self.services.reloader.request_reload()
        if self.workers is not None:
            self.workers.send_signal(signal.SIGHUP)

    # --- the stages, in STAGES order

    def _start_memory_trace(self) -> None:
        memory_trace.install(self.config.tracemalloc_prefix, self.config.tracemalloc_frames)

    def _start_lock(self) -> None:
        home = self.config.home
        home.ensure()
        try:
            lock = HomeLock.acquire(home.root)
        except HomeBusy as busy:
            raise RunConfigError(str(busy)) from None
        except OSError as error:
            raise RunConfigError(f"cannot lock the home {home.root}: {error.strerror}") from None
        self._stack.callback(lock.release)

    def _start_shared_metrics(self) -> None:
        """With workers, one metrics directory for the group (made and removed by the first)."""
        if self.config.worker_of_group:
            if (directory := shared_directory()) is not None:
                share_between_processes(directory)
            return
        if self.config.workers < 2:
            return
        made = Path(tempfile.mkdtemp(prefix="broker-proxy-metrics-"))
        share_between_processes(made)  # inherited by the workers through the environment
        self._stack.callback(shutil.rmtree, made, ignore_errors=True)

    def _start_broker(self) -> None:
        config = self.config
        policy_file = config.policy_file
        if not policy_file.exists():
            raise RunConfigError(
                f"no policy file at {policy_file}: start from an example with "
                "`broker-proxy policy init` (it writes the package's copy of "
                "policies/example.yaml there; --list shows the others), edit it and "
                "`broker-proxy policy check` it, or pass --policy FILE")
        self.broker = open_broker(config.home, policy_file, store=config.store,
                                  replica=config.replica_id, trust=self._trust())
        self._stack.callback(_close_audit, self.broker)

    def _trust(self) -> UpstreamTrust:
        # The bundle file is written (stage `certs`) before any request can mint a token.
        return UpstreamTrust(self._bundle, self.resolve)

    @property
    def _bundle(self) -> Path | None:
        if not self.config.upstream_ca:
            return None
        if "certs" in self.off:  # mitmdump: its ssl_verify_upstream_trusted_ca, as given
            return self.config.upstream_ca[0]
        return self.config.home.upstream_ca_bundle

    def _start_otlp(self) -> None:
        if self.config.otlp_endpoint:
            shipper = start_otlp(self.running_broker, self.config)
            self._stack.callback(shipper.stop)

    def _start_observability(self) -> None:
        config = self.config
        self.observability = start_observability(
            self.running_broker, config.home, audit_max_bytes=config.audit_max_bytes,
            checkpoint_every=config.audit_checkpoint_every,
            checkpoint_records=config.audit_checkpoint_records,
            checkpoint_copies=config.audit_checkpoint_copies,
            grant_retention=config.grant_retention)
        self._stack.callback(self.observability.stop)  # the last checkpoint covers the stop

    def _start_stop_record(self) -> None:
        self._stack.callback(self._record_stop)
        if self.observability is not None:  # no grant expiry record after proxy_stopped
            self._stack.callback(self.observability.watcher.stop)

    def _record_stop(self) -> None:
        """A stop on a log found cut or replaced writes nothing: its head state already names
        what was written, so the next start refuses until `audit recover` records the gap."""
        if not self.serving:
            return
        try:
            self.running_broker.audit.append("proxy_stopped", decision="allow",
                                             reason="stopped")
        except AuditError as error:
            print(f"broker-proxy: not recorded: proxy_stopped ({error})", file=sys.stderr,
                  flush=True)

    def _start_run_json(self) -> None:
        self._stack.callback(remove_own_runtime, self.config.home)

    def _start_services(self) -> None:
        config = self.config
        self.services = start_services(
            self.running_broker, config.home, config.policy_file, config.admin,
            config.console_session_ttl,
            checkpoint_problem=self.observability.checkpoint_problem
            if self.observability else None)
        self._stack.callback(self.services.stop)

    def _start_certs(self) -> None:
        self.certs = home_certs(self.config.home, self.config.certs)
        upstream_bundle(self.config.home, self.config.upstream_ca)

    def _start_workers(self) -> None:
        config = self.config
        if config.workers < 2 or config.worker_of_group:
            return
        if self.listen[1] == 0:
            self.listen = (self.listen[0], free_port(self.listen[0]))
        ensure_ca(self.certs)  # before the workers start, or each would make its own CA
        self.workers = WorkerGroup(worker_command(self.argv, *self.listen), config.workers - 1,
                                   self.running_broker.metrics.worker_restarts.inc)
        self._stack.callback(self.workers.stop)

    def _start_metrics(self) -> None:
        if self.config.metrics is None:
            return
        host, port = self.config.metrics
        try:
            self.metrics_address = f"{host}:{self.running_broker.metrics.serve(host, port)}"
        except OSError as error:
            raise RunConfigError(f"cannot listen for metrics on {host}:{port}: "
                                 f"{error.strerror}") from None

    def _start_heap_trim(self) -> None:
        trimmer = heap_trim.start_heap_trimmer(self.config.heap_trim_seconds)
        if trimmer is not None:
            self._stack.callback(trimmer.stop)

    # --- once listening

    def announce(self, host: str, port: int) -> dict[str, object]:
        """Freeze start-up objects, write run.json and `proxy_started`; run.json's fields."""
        gc_freeze.freeze_startup_objects(self.config.gc_freeze)  # before any traffic
        broker = self.running_broker
        if self.config.worker_of_group:
            try:
                broker.audit.append("proxy_started", decision="allow", reason="worker_started",
                                    policy=broker.policy.policy.digest)
            except AuditError as error:
                # Listening already: keep the connections the kernel gives us and answer them
                # (every request needs a record, so each gets 503 audit_unavailable) rather
                # than exit and have them reset.
                print(f"broker-proxy worker: {error}; requests are answered 503",
                      file=sys.stderr, flush=True)
            return {}
        services = self.services
        info: dict[str, object] = {
            "pid": os.getpid(), "listen": f"{host}:{port}", "metrics": self.metrics_address,
            "workers": self.config.workers, "ca": str(self.certs / "mitmproxy-ca-cert.pem")}
        if services is not None:
            info |= services.runtime_info()
            services.proxy_ready(f"{host}:{port}")
        self.config.home.runtime.write_text(json.dumps(info))
        broker.audit.append("proxy_started", decision="allow", reason="started",
                            policy=broker.policy.policy.digest)
        return info


def start_checked(with_reuse_port: bool) -> None:
    """Refuse a mitmproxy whose patched internals changed, before anything starts."""
    from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy

    try:
        patch_mitmproxy(with_reuse_port=with_reuse_port)
    except IncompatibleMitmproxy as error:
        raise RunConfigError(str(error)) from None


def _close_audit(broker: Broker) -> None:
    try:
        broker.audit.close()  # leaves the head state at the last record
    except AuditError as error:
        print(f"broker-proxy: {error}", file=sys.stderr, flush=True)

