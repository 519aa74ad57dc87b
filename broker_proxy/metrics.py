"""Prometheus metrics of one broker process.

Labels come only from bounded sets (decisions, reason codes, secret names of the policy), never
from grant ids, tokens, hosts or paths, so a hostile agent cannot blow up the series count.
Each broker gets its own registry so tests and embedded uses never collide on the global one.

With `run --workers N` the processes keep their metrics in one directory (prometheus_client's
multiprocess mode, see `share_between_processes`) and the first process serves the sum, so
/metrics counts every worker's traffic, not only its own.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client import values as metric_values
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(directory: Path) -> None:
    """Keep this process's metric values in `directory`, shared with the other workers.

    Must run before the process creates its BrokerMetrics (values are bound at creation). The
    variable is inherited by the workers it starts, which call this with the same directory.
    """
    os.environ[MULTIPROCESS_DIR_ENV] = str(directory)
    metric_values.ValueClass = metric_values.MultiProcessValue()


def shared_directory() -> Path | None:
    """The directory of `share_between_processes`, when this process uses one."""
    directory = os.environ.get(MULTIPROCESS_DIR_ENV)
    return Path(directory) if directory else None


class BrokerMetrics:
    """Every metric of the broker, declared by area; the names, labels and help texts are what
    docs/ and the Grafana dashboard (monitoring/) rely on."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Run before any metric is collected, so gauges read from the grant store are fresh.
        self.scrape_hooks: list[Callable[[], None]] = []
        self.registry.register(_ScrapeHooks(self.scrape_hooks))
        self._declare_request_metrics()
        self._declare_llm_metrics()
        self._declare_grant_metrics()
        self._declare_policy_metrics()
        self._declare_audit_metrics()
        self._declare_process_metrics()

    def _counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, documentation, labels, registry=self.registry)

    def _gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        # Set by the first process only; with workers the others hold 0, so the largest live
        # value is the one to serve.
        return Gauge(name, documentation, labels, registry=self.registry,
                     multiprocess_mode="livemax")

    def _declare_request_metrics(self) -> None:
        """What the broker decided for each request, and what it swapped in and scrubbed."""
        self.requests = self._counter(
            "broker_requests",
            "Requests decided, by decision (allow/deny) and stable reason code.",
            ["decision", "reason"])
        self.injections = self._counter(
            "broker_injections", "Secrets swapped into requests, by secret name.", ["secret"])
        self.rate_limited = self._counter(
            "broker_rate_limited",
            "Requests refused with 429 rate_limited, by the secret whose per-grant rate was "
            "spent.",
            ["secret"])
        self.protocol_checks = self._counter(
            "broker_protocol_checks",
            "Requests checked against a destination's MCP or GraphQL rules: protocol (mcp, "
            "graphql), action (an MCP method of the specification, else other; a GraphQL "
            "operation type or persisted) and outcome (passed, refused).",
            ["protocol", "action", "outcome"])
        self.redactions = self._counter(
            "broker_redactions", "Secret values scrubbed from responses, by secret name.",
            ["secret"])
        self.decision_seconds = Histogram(
            "broker_decision_seconds",
            "Time to decide on one request, including store, vault and audit.",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.upstream_failures = self._counter(
            "broker_upstream_failures",
            "Allowed requests answered 502 upstream_error (or whose agent went away), by kind "
            "of failure and whether the request had left (sent/not_sent).",
            ["kind", "outcome"])

    def _declare_llm_metrics(self) -> None:
        """Tokens and cost charged to grants, and requests refused for a spent budget."""
        self.budget_refusals = self._counter(
            "broker_budget_refusals",
            "Requests refused with 429 budget_exhausted, by secret and the dimension "
            "(input_tokens, output_tokens, micro_usd) that was spent.",
            ["secret", "dimension"])
        self.llm_tokens = self._counter(
            "broker_llm_tokens",
            "LLM tokens charged to grants, by agent, secret, model (as the policy names it, "
            'else "other") and direction (input/output).',
            ["agent", "secret", "model", "direction"])
        self.llm_cost = self._counter(
            "broker_llm_cost_usd",
            "LLM cost charged to grants in USD, from the policy's prices, by agent and secret.",
            ["agent", "secret"])

    def _declare_grant_metrics(self) -> None:
        """Kept by GrantWatcher (grant_watch.py) from the store, which every process of the
        home writes to: do not inc or set them anywhere else."""
        self.grants_issued = self._counter(
            "broker_grants_issued",
            "Grants issued (seen in the grant store since this process started).")
        self.grants_revoked = self._counter(
            "broker_grants_revoked",
            "Grants revoked (seen in the grant store since this process started).")
        self.grants_expired = self._counter(
            "broker_grants_expired", "Grants that reached their expiry while this process ran.")
        self.grants_active = self._gauge("broker_grants_active", "Grants currently usable.")
        self.grants_pending = self._gauge(
            "broker_grants_pending", "Grants waiting for a human approval.")
        self.grants_expiring_in_use = self._gauge(
            "broker_grants_expiring_in_use",
            "Active grants that have been used and expire within 5 minutes.")

    def _declare_policy_metrics(self) -> None:
        self.policy_reloads = self._counter(
            "broker_policy_reloads",
            "Policy loads, by result (ok/rejected/superseded by a newer file).", ["result"])
        self.policy_file_rejected = self._gauge(
            "broker_policy_file_rejected",
            "1 while the policy file on disk is rejected and the last good policy serves.")

    def _declare_audit_metrics(self) -> None:
        """The audit log, its checkpoint copies and its OTLP export; the gauges are set at
        each scrape by the process that writes (observability.py)."""
        self.audit_write_errors = self._counter(
            "broker_audit_write_errors", "Audit records that could not be written.")
        self.audit_log_unusable = self._gauge(
            "broker_audit_log_unusable",
            "1 while appends to the audit log fail or the writer refuses a log it did not write "
            "(requests needing a record get 503 audit_unavailable).")
        self.audit_records = self._counter(
            "broker_audit_records",
            "Audit records written by this process (including rotation and recovery records).")
        self.audit_checkpoint_copy_failures = self._counter(
            "broker_audit_checkpoint_copy_failures",
            "Signed checkpoints that could not be appended to a --audit-checkpoint-copy file.")
        self.audit_checkpoint_copy_failing = self._gauge(
            "broker_audit_checkpoint_copy_failing",
            "1 while a checkpoint copy (or the checkpoint file) cannot be written; /readyz "
            "says degraded and names it.")
        self.otlp_records_sent = self._counter(
            "broker_otlp_records_sent",
            "Audit records an OTLP collector accepted (run --otlp-endpoint).")
        self.otlp_records_unsent = self._counter(
            "broker_otlp_records_unsent",
            "Audit records a send to the OTLP collector failed for; they are sent again from "
            "the log, so this counts attempts, not losses.")

    def _declare_process_metrics(self) -> None:
        """The running process: its versions, workers, sign-ins and approval notices."""
        self.build_info = self._gauge(
            "broker_build_info", "Always 1; the labels say which versions run.",
            ["version", "mitmproxy", "python"])
        self.build_info.labels(*_versions()).set(1)
        self.worker_restarts = self._counter(
            "broker_worker_restarts",
            "Workers of `run --workers N` that died and were started again.")
        self.admin_signin_failures = self._counter(
            "broker_admin_signin_failures",
            "Admin API and console sign-ins refused (a wrong or missing token), by surface.",
            ["surface"])
        self.approval_webhook_failures = self._counter(
            "broker_approval_webhook_failures",
            "Notices about held requests that the approval webhook did not accept (or that "
            "were dropped because its queue was full).")

    def serve(self, host: str, port: int) -> int:
        """Expose /metrics on its own port (a daemon thread); returns the bound port.

        With workers, the served registry sums every worker's values from the shared directory
        (the hooks still run first, so this process's gauges are fresh).
        """
        registry = self.registry
        if (directory := shared_directory()) is not None:
            registry = CollectorRegistry(auto_describe=True)
            registry.register(_ScrapeHooks(self.scrape_hooks))
            MultiProcessCollector(registry, path=str(directory))
        return _serve(host, port, registry)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a line each on stderr."""


def _serve(host: str, port: int, registry: CollectorRegistry) -> int:
    """/metrics on a daemon thread, answering HEAD like GET without the body.

    prometheus_client's own server answers HEAD with 405, which breaks probes and load
    balancers that check an endpoint with HEAD.
    """
    app: WSGIApplication = make_wsgi_app(registry)  # annotated as a bare Callable upstream

    def metrics_app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD") == "HEAD":
            list(app(dict(environ, REQUEST_METHOD="GET"), start_response))
            return [b""]
        return app(environ, start_response)

    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    server_class = type("MetricsServer", (ThreadingMixIn, WSGIServer),
                        {"daemon_threads": True, "address_family": family})
    server: WSGIServer = make_server(host, port, metrics_app, server_class=server_class,
                         handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return int(server.server_port)


def _versions() -> tuple[str, str, str]:
    """(broker-proxy, mitmproxy, Python): read from package metadata, so the core still imports
    nothing from mitmproxy."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in ("broker-proxy", "mitmproxy"):
        try:
            found.append(version(package))
        except PackageNotFoundError:
            found.append("unknown")
    return found[0], found[1], platform.python_version()


class _ScrapeHooks:
    """A collector with no metrics of its own: it runs the hooks when a scrape begins."""

    def __init__(self, hooks: list[Callable[[], None]]) -> None:
        self._hooks = hooks

    def describe(self) -> Iterable[Metric]:
        return []  # registration must not run the hooks

    def collect(self) -> Iterable[Metric]:
        for hook in list(self._hooks):
            hook()
        return []
