"""The broker's mitmproxy addons, one concern each, sharing one broker.

- ``TunnelAuth``: the grant token of a CONNECT, for the requests inside the tunnel;
- ``Decide``: a decision per request, inline, off the loop or after the audit fsync;
- ``UpstreamGuard``: only an allowed upstream is dialled, at a checked address;
- ``ClientCerts``: a policy's client certificate on an allowed upstream connection;
- ``ScrubAnswers``: every answer on an allowed flow scrubbed, and recorded;
- ``UpstreamFailures``: every allowed flow whose upstream failed answered, logged and recorded.

``BrokerAddon`` holds them in mitmproxy's nested ``addons`` attribute (``broker-proxy run`` adds
the same list flat, so its indexed dispatch never walks a tree). What one hook learns for
later hooks is a ``FlowRecord`` under one metadata key (see flow_record.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from broker_proxy.addons.client_certs import ClientCerts
from broker_proxy.addons.connection_limits import Deadlines
from broker_proxy.addons.decide import Decide
from broker_proxy.addons.option_guards import OptionGuard
from broker_proxy.addons.scrub_answers import ScrubAnswers
from broker_proxy.addons.tunnel_auth import TunnelAuth
from broker_proxy.addons.upstream_failures import UpstreamFailures
from broker_proxy.addons.upstream_guard import UpstreamGuard

from broker_proxy.decision.broker import Broker
from broker_proxy.policy.resolve_pins import ResolvePins

DECISION_THREADS = 4  # decisions in flight at once when they may block (see Broker.may_block)


class BrokerAddon:
    def __init__(self, broker: Broker, resolve: ResolvePins | None = None, *,
                 keep_agent_view: bool = False, deadlines: Deadlines | None = None) -> None:
        self.broker = broker
        # Shared by every hook that may block: a tunnel admission, a decision, a client cert.
        decisions = ThreadPoolExecutor(max_workers=DECISION_THREADS,
                                       thread_name_prefix="broker-decide")
        self.tunnels = TunnelAuth(broker, decisions)
        self.upstreams = UpstreamGuard(broker, resolve or ResolvePins())
        self.client_certs = ClientCerts(broker, decisions)  # mTLS, see client_certs.py
        # Decisions waiting for the grant store's write lock (another process holds it) wait on
        # threads of their own, each until its request's deadline, so they never hold up the
        # decisions above that write nothing.
        store_writers = ThreadPoolExecutor(max_workers=DECISION_THREADS,
                                           thread_name_prefix="broker-store-write")
        self.decide = Decide(broker, decisions, self.tunnels, self.upstreams, self.client_certs,
                             store_writers=store_writers, keep_agent_view=keep_agent_view)
        self.scrub = ScrubAnswers(broker)
        self.failures = UpstreamFailures(broker, deadlines)
        # No hook is handled by two of them, so their order is free; OptionGuard first refuses
        # options that would undo the broker's guarantees before anything else is configured.
        self.addons = [OptionGuard(), self.tunnels, self.decide, self.upstreams,
                       self.client_certs, self.scrub, self.failures]
