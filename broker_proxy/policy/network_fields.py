"""Reading the ``network`` and ``egress`` sections: the addresses a destination may resolve to,
pinned resolutions, and the hosts any agent may reach without a secret."""

from __future__ import annotations

import ipaddress

import yaml

from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.destination_fields import parse_host_patterns
from broker_proxy.policy.field_checker import quoted
from broker_proxy.policy.resolve_pins import SPELLING as PIN_SPELLING
from broker_proxy.policy.resolve_pins import PinError, ResolvePins

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Pins = dict[tuple[str, int | None], tuple[str, int | None]]


def parse_egress(node: yaml.Node, checker: NodeChecker) -> tuple[str, ...]:
    """``egress.allow``: host patterns reachable without a secret."""
    egress = checker.fields(node, "egress", "egress", node) or {}
    if "allow" in egress:
        return parse_host_patterns(egress["allow"][1], "egress.allow", checker)
    return ()


def parse_network(node: yaml.Node, checker: NodeChecker) -> tuple[tuple[Network, ...], Pins]:
    """``network.allow_addresses`` and ``network.resolve``."""
    network = checker.fields(node, "network", "network", node) or {}
    allow_addresses: tuple[Network, ...] = ()
    resolve: Pins = {}
    if "allow_addresses" in network:
        allow_addresses = _networks(network["allow_addresses"][1], checker)
    if "resolve" in network:
        resolve = _pins(network["resolve"][1], checker)
    return allow_addresses, resolve


def _pins(node: yaml.Node, checker: NodeChecker) -> Pins:
    path = "network.resolve"
    pins: Pins = {}
    for item_path, item, value in checker.strings(node, path, f"a list of {PIN_SPELLING}") or ():
        try:
            pins.update(ResolvePins.parse([value], path).pins)
        except PinError:
            checker.report(item, item_path,
                           f"invalid pin {quoted(value)}: use {PIN_SPELLING}, such as "
                           "api.example.com:443=127.0.0.1:8443")
    return pins


def _networks(node: yaml.Node, checker: NodeChecker) -> tuple[Network, ...]:
    path = "network.allow_addresses"
    networks = []
    for item_path, item, value in checker.strings(node, path, "a list of CIDRs") or ():
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            checker.report(item, item_path,
                           f"invalid address range {quoted(value)}: use a CIDR such as "
                           "127.0.0.0/8")
    return tuple(dict.fromkeys(networks))
