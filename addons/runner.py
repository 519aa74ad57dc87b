"""`broker-proxy run`: mitmproxy embedded with only the addons the broker needs.

The broker's addon comes last, so nothing (MapRemote, ModifyHeaders, ...) can change a request
after it was checked, and no dumper can print an injected header. Dropping the ~30 default
addons we do not use also roughly doubles throughput (see MITMPROXY-NOTES).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_proxy.addons import (
    connection_limits,
    debug_checks,
    fail_closed,
    hook_dispatch,
    mitmproxy_patches,
    reuse_port,
    server_names,
)
from broker_proxy.addons.broker_addon import BrokerAddon
from broker_proxy.addons.connection_limits import ConnectionLimits, Deadlines
from broker_proxy.addons.hook_dispatch import IndexedAddonManager
from broker_proxy.addons.startup_errors import MitmproxyStartupErrors
from mitmproxy import ctx, options
from mitmproxy.addons import (
    block,
    core,
    disable_h2c,
    next_layer,
    proxyserver,
    tlsconfig,
)
from mitmproxy.addons.termlog import TermLog
from mitmproxy.master import Master

from broker_proxy.decision.broker import Broker
from broker_proxy.policy.resolve_pins import ResolvePins


@dataclass(frozen=True, slots=True)
class ProxySettings:
    listen_host: str
    listen_port: int
    certs_dir: Path
    upstream_ca_bundle: Path | None
    resolve: ResolvePins
    body_size_limit: str = "10m"
    # The mitmproxy options the broker sets (RunConfig's fields of the same names).
    connection_strategy: str = "lazy"  # dial upstream only after the request was decided
    validate_inbound_headers: bool = True
    ssl_insecure: bool = False
    termlog_verbosity: str = "warn"
    on_reload_signal: Callable[[], None] | None = None  # SIGHUP: reload the policy
    reuse_port: bool = False  # one of several worker processes on the same port
    deadlines: Deadlines = field(default_factory=Deadlines)  # request head, upstream connect, idle


class _Announce:
    """Reports the bound addresses once the proxy is really listening."""

    def __init__(self, on_ready: Callable[[str, int], None]) -> None:
        self._on_ready = on_ready

    def running(self) -> None:
        server = ctx.master.addons.get("proxyserver")
        host, port = server.listen_addrs()[0][:2]
        self._on_ready(host, port)


def patch_mitmproxy(*, with_reuse_port: bool) -> None:
    """Check every mitmproxy internal `run` changes, then change them; idempotent.

    Raises IncompatibleMitmproxy (one line) when one of them is not as read from 12.3.
    """
    hook_dispatch.check()
    server_names.check()
    connection_limits.check()
    mitmproxy_patches.install()  # see addons/mitmproxy_patches.py
    debug_checks.install()
    if with_reuse_port:
        reuse_port.enable_reuse_port()


def broker_addons(broker: Broker, settings: ProxySettings) -> list[Any]:
    """The broker's addons as `run` adds them, after mitmproxy's own: every hook fail-closed."""
    limits = fail_closed.guard([ConnectionLimits(settings.deadlines)], lambda: broker.audit)
    return [*limits, *BrokerAddon(broker, settings.resolve, deadlines=settings.deadlines).addons]


async def serve(broker: Broker, settings: ProxySettings,
                on_ready: Callable[[str, int], None]) -> None:
    patch_mitmproxy(with_reuse_port=settings.reuse_port)
    opts = options.Options(
        listen_host=settings.listen_host,
        listen_port=settings.listen_port,
        confdir=str(settings.certs_dir),
    )
    master = Master(opts, with_termlog=False)
    master.addons = IndexedAddonManager(master)
    master._termlog_addon = TermLog()  # Master uninstalls it when it stops
    master.addons.add(
        master._termlog_addon,
        core.Core(),
        block.Block(),
        disable_h2c.DisableH2C(),
        proxyserver.Proxyserver(),
        next_layer.NextLayer(),
        tlsconfig.TlsConfig(),
        MitmproxyStartupErrors(),
        _Announce(on_ready),
        *broker_addons(broker, settings),
    )
    # Options owned by addons exist only once the addons are added.
    opts.update(
        connection_strategy=settings.connection_strategy,
        validate_inbound_headers=settings.validate_inbound_headers,
        body_size_limit=settings.body_size_limit,
        ssl_insecure=settings.ssl_insecure,
        termlog_verbosity=settings.termlog_verbosity,
        tcp_timeout=max(1, round(settings.deadlines.idle)),
    )
    if settings.upstream_ca_bundle is not None:
        opts.update(ssl_verify_upstream_trusted_ca=str(settings.upstream_ca_bundle))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, master.shutdown)
    if settings.on_reload_signal is not None:
        loop.add_signal_handler(signal.SIGHUP, settings.on_reload_signal)
    await master.run()
