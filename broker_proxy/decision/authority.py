"""Does every name in a request point at the host the bytes really go to?

Inside a CONNECT tunnel the upstream connection goes to the CONNECT target, but the Host header,
an absolute-form request line and the client's SNI can each name another host, and a naive
upstream (or a CDN in front of it) routes by those. A secret is only safe to add when all of them
agree with the connection target.
"""

from __future__ import annotations

from broker_proxy.policy.destinations import HostError, canonical_host

DEFAULT_PORTS = {"http": 80, "https": 443}


class AuthorityError(ValueError):
    """An authority string that cannot be parsed into host and port."""


def split_authority(authority: str, scheme: str) -> tuple[str, int]:
    """Parse ``host[:port]`` or ``[v6]:port`` into a canonical host and a port."""
    text = authority.strip()
    if not text or any(c in text for c in "@/\\?# "):
        raise AuthorityError(f"invalid authority {authority!r}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise AuthorityError(f"invalid authority {authority!r}")
        # Brackets kept: canonical_host accepts only an IPv6 literal inside them.
        host, rest = text[: close + 1], text[close + 1 :]
        if rest and not rest.startswith(":"):
            raise AuthorityError(f"invalid authority {authority!r}")
        port_text = rest[1:] if rest else ""
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, ""
        elif ":" in host:
            # An IPv6 literal must be bracketed (RFC 3986 section 3.2.2): unbracketed, the last
            # group could be read as a port by us and as part of the address by the upstream.
            raise AuthorityError(f"invalid authority {authority!r}")
    if port_text:
        if not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
            raise AuthorityError(f"invalid port in authority {authority!r}")
        port = int(port_text)
    else:
        port = DEFAULT_PORTS.get(scheme, 0)
    if not 0 < port < 65536:
        raise AuthorityError(f"invalid port in authority {authority!r}")
    try:
        return canonical_host(host), port
    except HostError as error:
        raise AuthorityError(str(error)) from None


def authorities_agree(
    *,
    scheme: str,
    host: str,
    port: int,
    host_header: str | None,
    authority: str | None,
    sni: str | None,
) -> bool:
    """True when Host, the request-line authority and SNI all name ``host:port``."""
    try:
        target = (canonical_host(host), port)
        if host_header is not None and split_authority(host_header, scheme) != target:
            return False
        if authority and split_authority(authority, scheme) != target:
            return False
        if sni is not None and canonical_host(sni) != target[0]:
            return False
    except (AuthorityError, HostError):
        return False
    return True
