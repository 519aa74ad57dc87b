"""The policy fields of credentials that are never swapped in as they are: ``oauth2`` (a
token is minted from them) and ``client_cert`` (presented in the TLS handshake).

Kept apart from the loader so the loader stays about the policy's shape; the loader calls
these with its own checker, so messages carry ``FILE:LINE:COL: path: message`` like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from broker_proxy.policy.destinations import HostError, canonical_host, host_matches, path_matches
from broker_proxy.policy.model import Destination, OAuth2Config

if TYPE_CHECKING:
    import yaml

    from broker_proxy.policy.checking import NodeChecker

OAUTH2_FIELDS: tuple[str, ...] = ("token_url", "grant_type", "client_id", "scope", "auth")
GRANT_TYPES = ("client_credentials", "refresh_token")
CLIENT_AUTH = ("basic", "body")
CERT_SOURCE_KINDS = ("file", "env")


class TokenUrlError(ValueError):
    """A token_url the proxy will not post a client secret to."""


def split_token_url(url: str) -> tuple[str, int, str]:
    """(canonical host, port, path) of an https token endpoint, or TokenUrlError."""
    try:
        parts = urlsplit(url)
        port = parts.port or 443
    except ValueError:
        raise TokenUrlError("not a valid URL") from None
    # The client secret is posted here: never over plain http, never with smuggled userinfo.
    if parts.scheme != "https":
        raise TokenUrlError("must be an https:// URL")
    if parts.username is not None or parts.password is not None:
        raise TokenUrlError("must not hold a user or password")
    if parts.fragment or parts.query:
        raise TokenUrlError("must not have a query string or fragment")
    if not parts.hostname:
        raise TokenUrlError("must name a host")
    try:
        host = canonical_host(parts.hostname)
    except HostError as error:
        raise TokenUrlError(str(error)) from None
    return host, port, parts.path or "/"


def covers_token_url(destination: Destination, oauth2: OAuth2Config) -> bool:
    """Could the agent send this secret's placeholder to its own token endpoint?

    Methods are ignored on purpose: a destination anywhere near the token endpoint is a
    mistake worth an error, whichever methods it names.
    """
    host, port, path = split_token_url(oauth2.token_url)
    if destination.scheme != "https" or destination.port != port:
        return False
    if not host_matches(destination.host, host):
        return False
    return not destination.paths or any(path_matches(glob, path) for glob in destination.paths)


def parse_oauth2(node: yaml.Node, key: yaml.Node, path: str,
                 checker: NodeChecker) -> OAuth2Config | None:
    """The ``oauth2:`` mapping of a secret; problems go to the loader's checker."""
    fields = checker.fields(node, path, "oauth2", key)
    if fields is None:
        return None
    before = len(checker.issues)
    values: dict[str, str | None] = {}
    for name in OAUTH2_FIELDS:
        if name in fields:
            values[name] = checker.string(fields[name][1], f"{path}.{name}")
    token_url = values.get("token_url")
    if token_url is not None:
        try:
            split_token_url(token_url)
        except TokenUrlError as error:
            # The URL is not repeated: an operator may have pasted credentials into it.
            checker.report(fields["token_url"][1], f"{path}.token_url", str(error))
    for name, options in (("grant_type", GRANT_TYPES), ("auth", CLIENT_AUTH)):
        given = values.get(name)
        if given is not None and given not in options:
            checker.report(fields[name][1], f"{path}.{name}",
                           f"unknown {name} {given!r}: use {' or '.join(options)}")
    client_id = values.get("client_id")
    if client_id is not None and (not client_id or any(c < " " for c in client_id)):
        checker.report(fields["client_id"][1], f"{path}.client_id",
                       "must be non-empty text without control characters")
    if len(checker.issues) > before or token_url is None or client_id is None:
        return None
    grant_type = values.get("grant_type")
    if grant_type is None:
        return None
    return OAuth2Config(token_url=token_url, grant_type=grant_type, client_id=client_id,
                        scope=values.get("scope"), auth=values.get("auth") or "basic")


def parse_client_cert(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    """``client_cert: file:PATH`` or ``env:VAR``: where the certificate (chain) PEM is read."""
    source = checker.string(node, path, "a certificate source such as file:certs/client.pem")
    if source is None:
        return None
    kind, colon, argument = source.partition(":")
    if kind not in CERT_SOURCE_KINDS or not colon or not argument:
        checker.report(node, path, "not a certificate source: use file:PATH or env:VAR")
        return None
    return source
