"""`--resolve HOST[:PORT]=IP[:PORT]`: connect to a fixed address (and port) for a name.

Like curl's `--connect-to`: the request, its Host header, the TLS name and every policy check
still use HOST and PORT; only the socket goes to IP:PORT. So an SDK that talks to
`https://api.openai.com` can be pointed at a local stand-in on 127.0.0.1:8443 without changing
its base URL. A pin with a port applies to that port only and wins over a pin without one.

Shared by `broker-proxy run`, the `mitmdump -s` entry point and the OAuth2 token minting, so all
three read the same spelling the same way and report the same reason when it is wrong.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address

from broker_proxy.errors import BrokerError
from broker_proxy.policy.destinations import HostError, canonical_host

SPELLING = "HOST[:PORT]=IP[:PORT]"


class PinError(BrokerError, ValueError):
    """A pin that cannot be read; the message names the option's spelling and the bad value."""


@dataclass(frozen=True, slots=True)
class ResolvePins:
    """(canonical host, port or None) -> (address, port or None: keep the request's port)."""

    pins: Mapping[tuple[str, int | None], tuple[str, int | None]] = field(default_factory=dict)

    @classmethod
    def parse(cls, specs: Iterable[str], option: str = "--resolve") -> ResolvePins:
        pins: dict[tuple[str, int | None], tuple[str, int | None]] = {}
        for spec in specs:
            name, sep, target = spec.partition("=")
            if not sep:
                raise PinError(f"{option} must be {SPELLING}, got {spec!r}")
            try:
                host, port = _host_and_port(name)
                address, to_port = _address_and_port(target)
            except (HostError, ValueError):
                raise PinError(f"{option} must be {SPELLING}, got {spec!r}") from None
            pins[(host, port)] = (address, to_port)
        return cls(pins)

    @classmethod
    def of_hosts(cls, addresses: Mapping[str, str]) -> ResolvePins:
        """HOST -> IP for every port (what tests and the demo need)."""
        return cls({(canonical_host(h), None): (str(ip_address(a)), None)
                    for h, a in addresses.items()})

    def lookup(self, host: str, port: int) -> tuple[str, int] | None:
        """Where to connect for host:port, or None to resolve the name as usual."""
        try:
            name = canonical_host(host)
        except HostError:
            return None
        found = self.pins.get((name, port)) or self.pins.get((name, None))
        if found is None:
            return None
        address, to_port = found
        return address, to_port if to_port is not None else port

    def __bool__(self) -> bool:
        return bool(self.pins)

    def spelled(self) -> tuple[str, ...]:
        """Each pin as HOST[:PORT]=IP[:PORT], sorted: for diffs and messages."""
        return tuple(sorted(f"{_joined(host, port)}={_joined(address, to_port)}"
                            for (host, port), (address, to_port) in self.pins.items()))


def _joined(host: str, port: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None else f"{shown}:{port}"


def _host_and_port(text: str) -> tuple[str, int | None]:
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and "]" not in port:
        return canonical_host(host), _port(port)
    return canonical_host(text), None


def _address_and_port(text: str) -> tuple[str, int | None]:
    if text.startswith("["):  # [::1]:8443 or [::1]
        inside, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(text)
        return str(ip_address(inside)), _port(rest[1:]) if rest else None
    if text.count(":") == 1:  # IPv4:PORT
        address, _, port = text.partition(":")
        return str(ip_address(address)), _port(port)
    return str(ip_address(text)), None  # IPv4, or a bare IPv6 address


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(text)
    return int(text)
