"""Which upstream addresses a request may be connected to.

A granted name can resolve to 127.0.0.1, a private network or the cloud metadata service
(169.254.169.254): sending a secret there hands it to whatever listens inside our own network.
Such addresses are refused unless the policy's ``network.allow_addresses`` names them.
"""

from __future__ import annotations

from collections.abc import Iterable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

# Deprecated IPv4-compatible addresses (RFC 4291 section 2.5.5.1): "::127.0.0.1" embeds an IPv4
# address, yet ``ipaddress`` calls most of them global.
_IPV4_COMPATIBLE = IPv6Network("::/96")


def address_allowed(
    address: str, allowed_networks: Iterable[IPv4Network | IPv6Network]
) -> bool:
    try:
        ip: IPv4Address | IPv6Address = ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 is loopback too
    if any(ip in network for network in allowed_networks):
        return True
    if isinstance(ip, IPv6Address) and ip in _IPV4_COMPATIBLE:
        return False
    return ip.is_global and not ip.is_multicast
