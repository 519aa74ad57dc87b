"""Where a secret may go: host canonicalisation, host and path patterns, and the index the
request path asks.

Policy hosts and request hosts go through the same ``canonical_host``, so "API.GitHub.com.",
"api.github.com" and an IDN spelled in Unicode or in punycode compare equal as strings and a
match is a dict lookup. The index answers per request in O(labels in the host), whatever the
number of rules: one lookup for the exact host, one per parent suffix for wildcards.

Callers pass hosts that already came out of ``canonical_host`` (the request layer does that once
per request); anything else simply matches nothing, which fails closed.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import lru_cache

from broker_proxy.policy.media_types import WithholdRule, rule_for
from broker_proxy.policy.model import NEVER_METHODS, Destination, Policy

MAX_HOST_LENGTH = 253  # RFC 1035 section 2.3.4, without the trailing dot
# Underscores are not LDH but real hosts use them (SRV-style names, some cloud endpoints).
_LABEL = re.compile(r"[a-z0-9_-]{1,63}")
# WHATWG URL: a host whose last label is a number is parsed as IPv4, so "127.1" or
# "0x7f.0.0.1" reach 127.0.0.1 in some clients and resolvers. Such names are refused instead
# of guessed, so they can never sneak past an IP rule written in canonical form.
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")


class HostError(ValueError):
    """A host or host pattern that cannot be put in canonical form."""


class GlobError(ValueError):
    """A path pattern that is not a valid glob."""


@functools.lru_cache(maxsize=4096)  # every request canonicalises the same few hosts
def canonical_host(raw: str) -> str:
    """The one spelling of a host that policy and requests are compared in.

    Lower-case, one trailing dot removed, non-ASCII names IDNA-encoded (Python's "idna" codec,
    IDNA 2003 with nameprep), IP literals in ``ipaddress`` form (IPv6 without brackets).
    """
    if not isinstance(raw, str) or not raw:
        raise HostError("invalid host: it is empty")
    if "%" in raw:
        # Zone ids ("fe80::1%eth0") and percent-escapes never name a remote host.
        raise HostError(f'invalid host {_quoted(raw)}: "%" is not allowed in a host')
    if raw.startswith("[") or raw.endswith("]"):
        # Brackets only ever wrap an IPv6 literal (RFC 3986 section 3.2.2).
        if not (raw.startswith("[") and raw.endswith("]")):
            raise HostError(f"invalid host {_quoted(raw)}: unbalanced brackets")
        return _ipv6(raw[1:-1], raw)
    if "/" in raw or "@" in raw:
        raise HostError(f"invalid host {_quoted(raw)}: write the host name alone, without a "
                        "scheme, user or path")
    if ":" in raw:
        if raw.count(":") == 1:
            raise HostError(f"invalid host {_quoted(raw)}: write the host name alone; a port "
                            "belongs in port:")
        return _ipv6(raw, raw)
    host = raw[:-1] if raw.endswith(".") else raw
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise HostError(
                f"invalid host {_quoted(raw)}: not a valid international name"
            ) from None
    host = host.lower()
    if len(host) > MAX_HOST_LENGTH:
        raise HostError(f"invalid host {_quoted(raw)}: longer than {MAX_HOST_LENGTH} characters")
    labels = host.split(".")
    for label in labels:
        if not _LABEL.fullmatch(label):
            raise HostError(
                f"invalid host {_quoted(raw)}: each dot-separated label must be 1 to 63 letters,"
                ' digits, "-" or "_"'
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise HostError(f"invalid host {_quoted(raw)}: not a valid IPv4 address or host name")
    return host


def _ipv6(literal: str, raw: str) -> str:
    try:
        return ipaddress.IPv6Address(literal).compressed
    except ValueError:
        raise HostError(
            f"invalid host {_quoted(raw)}: not a valid IPv6 address"
        ) from None


def canonical_host_pattern(raw: str) -> str:
    """A policy host: an exact host, or "*.suffix" where the wildcard is the whole first label."""
    if not isinstance(raw, str) or "*" not in raw:
        return canonical_host(raw)
    suffix = raw[2:] if raw.startswith("*.") else ""
    if not suffix or "*" in suffix:
        raise HostError(
            f"invalid host pattern {_quoted(raw)}: a wildcard must be the whole first label,"
            " e.g. *.example.com"
        )
    suffix = canonical_host(suffix)
    if is_ip_literal(suffix):
        raise HostError(
            f"invalid host pattern {_quoted(raw)}: a wildcard cannot cover IP addresses"
        )
    if "." not in suffix:
        # "*.com" would hand a secret to every name in a top-level domain.
        raise HostError(
            f"invalid host pattern {_quoted(raw)}: a wildcard must cover a domain of at least"
            " two labels, e.g. *.example.com"
        )
    return "*." + suffix


def is_ip_literal(host: str) -> bool:
    """True for a canonical IPv4 or IPv6 address, which never matches a wildcard."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_matches(pattern: str, host: str) -> bool:
    """Exact match, or "*.example.com" for one or more labels before ".example.com".

    Both sides are canonical; the leading dot of the suffix keeps the match label-aligned,
    so "badexample.com" and "example.com" itself are not covered.
    """
    if pattern.startswith("*."):
        suffix = pattern[1:]
        return len(host) > len(suffix) and host.endswith(suffix)
    return pattern == host


def check_path_glob(glob: str) -> None:
    """Raise GlobError unless ``glob`` is a path glob (what the loader needs, nothing built)."""
    if not glob.startswith("/"):
        raise GlobError(f"invalid path pattern {_quoted(glob)}: it must start with /")
    if "**" in glob and any("**" in segment and segment != "**"
                            for segment in glob.split("/")):
        raise GlobError(
            f'invalid path pattern {_quoted(glob)}: "**" must be a whole segment, e.g. /a/**'
        )


def path_glob_regex(glob: str) -> str:
    """The anchored regex source of a path glob, compiled by whoever needs to match.

    ``*`` is any run of characters inside one segment, a whole ``**`` segment is any number of
    segments (zero included, so "/repos/acme/**" also covers "/repos/acme"), and everything
    else is literal: "?", "[" and "." mean themselves, so a glob can never smuggle in a regex.
    Only escaped text and fixed pieces go in, so the source always compiles: the loader only
    checks globs (``check_path_glob``), since compiling 100,000 of them took most of a large
    policy's load.
    """
    check_path_glob(glob)
    parts = []
    for segment in glob.split("/")[1:]:
        if segment == "**":
            parts.append("(?:/.*)?")
        else:
            parts.append("/" + "[^/]*".join(re.escape(piece) for piece in segment.split("*")))
    return "".join(parts)


def compile_path_glob(glob: str) -> re.Pattern[str]:
    """Turn a path glob into an anchored regex (see ``path_glob_regex``)."""
    return re.compile(path_glob_regex(glob), re.DOTALL)


@lru_cache(maxsize=1024)
def _cached_glob(glob: str) -> re.Pattern[str]:
    return compile_path_glob(glob)


def path_matches(glob: str, path: str) -> bool:
    """Does ``path`` (query string already removed) match ``glob``?

    Dot segments and percent-escapes are compared as written: the request layer must reject or
    normalise "/a/../b" before asking, or "/repos/acme/**" would cover "/repos/acme/../other".
    """
    return _cached_glob(glob).fullmatch(path) is not None


def parent_suffixes(host: str) -> Iterator[str]:
    """"a.b.example.com" -> "b.example.com", "example.com", "com": what a wildcard may cover."""
    dot = host.find(".")
    while dot != -1:
        yield host[dot + 1 :]
        dot = host.find(".", dot + 1)


def _paths_source(destination: Destination) -> str | None:
    """All of a destination's globs as one alternation, so a check is one regex call."""
    if not destination.paths:
        return None
    return "|".join(f"(?:{path_glob_regex(glob)})" for glob in destination.paths)


class DestinationIndex:
    """Every destination of a policy, keyed so a request costs a few dict lookups.

    Exact hosts are keyed on (secret, scheme, host, port) and wildcards on
    (secret, scheme, suffix, port). The egress allow-list applies to any port and to both
    https and http: egress traffic carries no secret, and the request layer decides on its own
    whether plain http is acceptable at all.
    """

    __slots__ = ("_at_host", "_at_suffix", "_compiled", "_covering", "_egress_exact",
                 "_egress_suffixes", "_exact", "_paths", "_wild", "_wild_covering",
                 "_withhold_host", "_withhold_suffix")

    def __init__(self, policy: Policy) -> None:
        exact: dict[tuple[str, str, str, int], list[Destination]] = defaultdict(list)
        wild: dict[tuple[str, str, str, int], list[Destination]] = defaultdict(list)
        covering: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        wild_covering: dict[tuple[str, str, int], set[str]] = defaultdict(set)
        # Regex sources, compiled on a destination's first request: a policy of 100,000
        # secrets is mostly destinations no request will ask about before the next reload, and
        # compiling them all took seconds. Equal sources share one compiled pattern.
        self._paths: dict[Destination, str | None] = {}
        self._compiled: dict[str, re.Pattern[str]] = {}
        for secret in policy.secrets.values():
            for destination in secret.destinations:
                scheme, host, port = destination.scheme, destination.host, destination.port
                if host.startswith("*."):
                    wild[(secret.name, scheme, host[2:], port)].append(destination)
                    wild_covering[(scheme, host[2:], port)].add(secret.name)
                else:
                    exact[(secret.name, scheme, host, port)].append(destination)
                    covering[(scheme, host, port)].add(secret.name)
                if destination not in self._paths:
                    self._paths[destination] = _paths_source(destination)
        self._exact = {key: tuple(found) for key, found in exact.items()}
        self._wild = {key: tuple(found) for key, found in wild.items()}
        self._covering = {key: frozenset(names) for key, names in covering.items()}
        self._wild_covering = {key: frozenset(names) for key, names in wild_covering.items()}
        # Host -> secrets, any scheme, port or path: what an answer from that host may hold
        # because some grant sent it there (see ``secrets_sent_to_host``).
        at_host: dict[str, set[str]] = defaultdict(set)
        at_suffix: dict[str, set[str]] = defaultdict(set)
        for (_scheme, covered, _port), names in covering.items():
            at_host[covered].update(names)
        for (_scheme, suffix, _port), names in wild_covering.items():
            at_suffix[suffix].update(names)
        self._at_host = {key: frozenset(names) for key, names in at_host.items()}
        self._at_suffix = {key: frozenset(names) for key, names in at_suffix.items()}
        self._withhold_host, self._withhold_suffix = _withhold_maps(policy)
        self._egress_exact = frozenset(p for p in policy.egress_allow if not p.startswith("*."))
        self._egress_suffixes = frozenset(p[2:] for p in policy.egress_allow if p.startswith("*."))

    def destinations_for(
        self, secret_name: str, scheme: str, host: str, port: int
    ) -> tuple[Destination, ...]:
        """The destinations of ``secret_name`` that cover scheme://host:port, exact ones first."""
        found = self._exact.get((secret_name, scheme, host, port), ())
        for suffix in parent_suffixes(host):
            more = self._wild.get((secret_name, scheme, suffix, port))
            if more:
                found = found + more if found else more
        return found

    def allows(
        self, secret_name: str, scheme: str, host: str, port: int, method: str, path: str
    ) -> bool:
        """May ``secret_name`` be sent with this method to this path? ``path`` has no query."""
        method = method.upper()
        if method in NEVER_METHODS:
            return False
        for destination in self.destinations_for(secret_name, scheme, host, port):
            if method not in destination.methods:
                continue
            source = self._paths[destination]
            if source is None or self._paths_pattern(source).fullmatch(path):
                return True
        return False

    def allowing(
        self, secret_name: str, scheme: str, host: str, port: int, method: str, path: str
    ) -> list[Destination]:
        """The destinations of ``secret_name`` that allow this method and path (for the MCP and
        GraphQL rules: a request passes when one of them lets it)."""
        method = method.upper()
        if method in NEVER_METHODS:
            return []
        return [destination
                for destination in self.destinations_for(secret_name, scheme, host, port)
                if method in destination.methods
                and ((source := self._paths[destination]) is None
                     or self._paths_pattern(source).fullmatch(path))]

    def _paths_pattern(self, source: str) -> re.Pattern[str]:
        # Two threads compiling the same source at once both store an equal pattern: harmless.
        pattern = self._compiled.get(source)
        if pattern is None:
            pattern = self._compiled[source] = re.compile(source, re.DOTALL)
        return pattern

    def secrets_covering(self, scheme: str, host: str, port: int) -> frozenset[str]:
        """Names of the secrets with any destination on scheme://host:port."""
        names = self._covering.get((scheme, host, port), frozenset())
        for suffix in parent_suffixes(host):
            more = self._wild_covering.get((scheme, suffix, port))
            if more:
                names = names | more if names else more
        return names

    def secrets_sent_to_host(self, host: str) -> frozenset[str]:
        """Names of the secrets the policy lets any grant send to ``host``, on any scheme, port
        or path.

        An answer from ``host`` is scrubbed for all of them, whoever asks: one grant's request
        may have stored its value there (a session, a profile field, an object) and another
        grant, agent or an egress-only request can read it back. Port, scheme and path are
        left out on purpose: a value stored through one endpoint of a service is readable
        through its others.
        """
        names = self._at_host.get(host, frozenset())
        for suffix in parent_suffixes(host):
            more = self._at_suffix.get(suffix)
            if more:
                names = names | more if names else more
        return names

    def withhold_at(self, host: str) -> WithholdRule | None:
        """The media types whose answers from ``host`` are withheld, or None (most hosts).

        By host, like ``secrets_sent_to_host``: every answer from it is scrubbed for the
        secrets whose destinations list them, whoever asks. A policy without any ``withhold``
        answers None at once.
        """
        if not self._withhold_host and not self._withhold_suffix:
            return None
        patterns = self._withhold_host.get(host, frozenset())
        if self._withhold_suffix:
            for suffix in parent_suffixes(host):
                more = self._withhold_suffix.get(suffix)
                if more:
                    patterns = patterns | more
        return rule_for(patterns)

    def egress_allows(self, host: str) -> bool:
        """Is ``host`` on the egress allow-list (any port, https or http)?"""
        if host in self._egress_exact:
            return True
        return any(suffix in self._egress_suffixes for suffix in parent_suffixes(host))


def _withhold_maps(policy: Policy) -> tuple[dict[str, frozenset[str]],
                                            dict[str, frozenset[str]]]:
    """Exact host -> patterns and wildcard suffix -> patterns, any scheme, port or path."""
    at_host: dict[str, set[str]] = defaultdict(set)
    at_suffix: dict[str, set[str]] = defaultdict(set)
    for secret in policy.secrets.values():
        for destination in secret.destinations:
            if destination.withhold:
                host = destination.host
                if host.startswith("*."):
                    at_suffix[host[2:]].update(destination.withhold)
                else:
                    at_host[host].update(destination.withhold)
    return ({key: frozenset(found) for key, found in at_host.items()},
            {key: frozenset(found) for key, found in at_suffix.items()})


def _quoted(value: str) -> str:
    """Double-quoted, control characters escaped, cut short: messages stay one readable line."""
    shown = value if len(value) <= 100 else value[:100] + "..."
    return json.dumps(shown, ensure_ascii=False)
