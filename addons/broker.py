"""Entry point for ``mitmdump -s addons/broker.py``.

    mitmdump -s addons/broker.py --set broker_home=~/.broker-proxy \
        --set broker_policy=policies/example.yaml --set listen_host=127.0.0.1

`broker-proxy run` is the recommended way to run the broker: it drops mitmproxy's default
addons, some of which (MapRemote, ModifyHeaders, the dumper) run after a script and could change
or print a request after it was checked. This entry point exists for setups that already run
mitmdump. If the broker cannot start (bad policy, unusable store or audit log), every request is
refused with 503: mitmdump would otherwise run as an open proxy.

The broker is opened by the runtime's BrokerProcess, as `broker-proxy run` opens it, with what
mitmdump cannot run switched off (runtime/process.py MITMDUMP_OFF). This layer never imports the
runtime: the opener is found through the package's entry point ``broker_proxy.mitmdump``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib.metadata import entry_points
from typing import Protocol

from broker_proxy.addons import (
    connection_limits,
    fail_closed,
    flow_adapter,
    mitmproxy_patches,
    server_names,
)
from broker_proxy.addons.broker_addon import BrokerAddon
from broker_proxy.addons.connection_limits import ConnectionLimits
from broker_proxy.addons.flow_record import flow_record
from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from broker_proxy.addons.option_guards import unsafe_option
from mitmproxy import addonmanager, ctx, http, tcp
from mitmproxy.exceptions import OptionsError
from mitmproxy.proxy import server_hooks

from broker_proxy.audit.log import AuditLog
from broker_proxy.decision.broker import Broker
from broker_proxy.error_text import describe_error
from broker_proxy.errors import BrokerError
from broker_proxy.policy.resolve_pins import ResolvePins
from broker_proxy.request import codes
from broker_proxy.request.outbound import Denied

log = logging.getLogger("broker_proxy.script")

# Where the runtime's opener is declared (pyproject.toml): broker_proxy.runtime.script_host.
RUNTIME_ENTRY_GROUP = "broker_proxy.mitmdump"
RUNTIME_ENTRY_NAME = "open_broker"


class BrokerOpener(Protocol):
    """Opens the broker from the script's options, as `broker-proxy run` would open it."""

    def __call__(self, *, home: str | None, policy: str | None, resolve: Sequence[str],
                 trusted_ca: str | None) -> Broker: ...


class RuntimeMissing(BrokerError):
    """The package's runtime entry point is not installed (a copied script, a broken install)."""


def runtime_opener() -> BrokerOpener:
    """The runtime's opener, found by its entry point: this layer never imports the runtime."""
    for entry in entry_points(group=RUNTIME_ENTRY_GROUP, name=RUNTIME_ENTRY_NAME):
        opener: BrokerOpener = entry.load()
        return opener
    raise RuntimeMissing("broker-proxy is not installed in this Python: its runtime entry "
                         f"point {RUNTIME_ENTRY_GROUP}:{RUNTIME_ENTRY_NAME} is missing")


BROKER_OPTIONS = {"broker_home", "broker_policy", "broker_resolve"}


class BrokerScript:
    """Options, start-up and refusals; the broker's own addons are its children once started.

    mitmproxy calls a parent's hook before its children's, and reads ``addons`` on every event,
    so the children change when the broker (re)starts: before, and after a failed start, only
    the refusals below run.
    """

    def __init__(self) -> None:
        # Request-head and upstream-connect deadlines, close after 413.
        self.limits = ConnectionLimits()
        self.agent_view = AgentView()
        self.inner: BrokerAddon | None = None
        self.startup_error = "the broker has not started"
        # Fail-closed like the broker's own addons (its refusals too); recorded once the broker
        # has started.
        fail_closed.guard([self, self.limits, self.agent_view], self._audit)

    def _audit(self) -> AuditLog | None:
        return self.inner.broker.audit if self.inner is not None else None

    @property
    def addons(self) -> list[object]:
        inner = [self.inner] if self.inner is not None else []
        # AgentView last: it puts the agent's request back once the others are done with it.
        return [self.limits, *inner, self.agent_view]

    def load(self, loader: addonmanager.Loader) -> None:
        loader.add_option("broker_home", str, "",
                          "broker-proxy home (default $BROKER_PROXY_HOME or ~/.broker-proxy)")
        loader.add_option("broker_policy", str, "",
                          "policy file (default $BROKER_PROXY_POLICY or <home>/policy.yaml)")
        loader.add_option("broker_resolve", Sequence[str], [],
                          "HOST[:PORT]=IP[:PORT] pins: connect to IP (and PORT) for HOST (and "
                          "PORT), like curl's --connect-to (split DNS, tests)")

    def configure(self, updated: set[str]) -> None:
        if problem := unsafe_option(ctx.options):
            # Refuse every request until the option is gone, then say why; mitmproxy rolls a
            # change at run time back (and calls configure again), or stops at start-up.
            self._stop()
            self.startup_error = problem
            log.error("broker-proxy refuses all requests: %s", problem)
            raise OptionsError(problem)
        if self.inner is None or updated & BROKER_OPTIONS:
            self._start()
        if ctx.options.connection_strategy != "lazy":
            # Dial upstream only after the request was decided.
            ctx.options.connection_strategy = "lazy"

    def _start(self) -> None:
        self._stop()
        if _INCOMPATIBLE is not None:
            self.startup_error = _INCOMPATIBLE
            log.error("broker-proxy refuses all requests: %s", self.startup_error)
            return
        try:
            resolve = ResolvePins.parse(ctx.options.broker_resolve, "broker_resolve")
            # OAuth2 token endpoints get the same trust as upstreams (see secrets/oauth2.py).
            trusted_ca = getattr(ctx.options, "ssl_verify_upstream_trusted_ca", None)
            broker = runtime_opener()(home=ctx.options.broker_home or None,
                                      policy=ctx.options.broker_policy or None,
                                      resolve=list(ctx.options.broker_resolve),
                                      trusted_ca=trusted_ca or None)
        except Exception as error:
            self.startup_error = describe_error(error) or type(error).__name__
            log.error("broker-proxy refuses all requests: %s", self.startup_error)
            return
        self.inner = BrokerAddon(broker, resolve, keep_agent_view=True)

    def _stop(self) -> None:
        self.inner = None

    def _refuse(self, flow: http.HTTPFlow) -> None:
        flow_adapter.deny(flow, Denied(503, codes.INTERNAL_ERROR,
                                       "the broker is not running: " + self.startup_error))

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if self.inner is None:
            self._refuse(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        if self.inner is None:
            self._refuse(flow)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if self.inner is None:
            data.server.error = "the broker is not running"

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        if self.inner is None:  # else the broker's UpstreamGuard cuts it
            flow.kill()


class AgentView:
    """Put back the request as the agent sent it, now that the real one has left.

    The script runs before mitmdump's dumper and event log: what they print of the request
    (the URL at flow_detail 1) must show the placeholders, never an injected value.
    """

    def response(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._restore(flow)

    @staticmethod
    def _restore(flow: http.HTTPFlow) -> None:
        record = flow_record(flow)
        if record is not None and record.agent_view is not None:
            flow.request, record.agent_view = record.agent_view, None


def _patch_mitmproxy() -> str | None:
    """Patch what the script needs; the reason to refuse every request if mitmproxy changed."""
    try:
        server_names.check()
        connection_limits.check()
        mitmproxy_patches.install()  # see addons/mitmproxy_patches.py
    except IncompatibleMitmproxy as error:
        return str(error)
    return None


_INCOMPATIBLE = _patch_mitmproxy()
addons = [BrokerScript()]
