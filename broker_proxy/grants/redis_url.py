"""A grant store URL (redis:// or rediss://) to redis-py's keyword arguments, and to the form
messages show (without credentials).
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from broker_proxy.grants.store import GrantStoreError

_URL_FORMS = "redis://[:PASSWORD@]HOST:PORT/DB or rediss://[:PASSWORD@]HOST:PORT/DB"


def parse_url(url: str) -> tuple[dict[str, Any], str]:
    """redis-py keyword arguments for the URL, and the URL without credentials for messages.

    Parsed here rather than by redis-py's from_url, which turns any query parameter into a
    client option: a URL must not be able to switch off TLS certificate checks.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"ssl_ca_certs"})
    if unknown or (query and parts.scheme != "rediss"):
        raise GrantStoreError("grant store URL may only carry ssl_ca_certs, and only with rediss")
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    where = f"{parts.scheme}://{shown_host}:{port}/{int(db_text)}"
    options: dict[str, Any] = {"host": host, "port": port, "db": int(db_text)}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        # Verified TLS only: the store decides who may use which secret.
        options |= {"ssl": True, "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        if "ssl_ca_certs" in query:
            options["ssl_ca_certs"] = query["ssl_ca_certs"][0]
    return options, where
