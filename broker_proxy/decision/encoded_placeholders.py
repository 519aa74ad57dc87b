"""Placeholders hidden in a header by an encoding the upstream will undo.

The swap only ever replaces a placeholder as written, so an encoded one is never swapped. It is
still reported: ``Authorization: Basic base64(user:{{secret:x}})`` or a percent-encoded
placeholder is an attempt to make the upstream (or a later hop) decode it into a place the
policy never allowed, and such a request is refused rather than forwarded half-understood.
The one exception is clean Basic credentials for a secret whose policy has ``basic:`` (see
basic_credentials.py): reported as the "basic" place, which only such a secret allows.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from urllib.parse import unquote

from broker_proxy.decision.basic_credentials import basic_secret
from broker_proxy.decision.placeholders import PlaceholderScanner
from broker_proxy.policy.model import BASIC_PLACE

# Tokens long enough to hold an encoded "{{secret:x}}"; shorter runs cannot, and skipping them
# keeps the cost per header to a few decode attempts.
_BASE64_TOKEN = re.compile(r"[A-Za-z0-9+/_\-]{16,}={0,2}")
MAX_DECODE_ROUNDS = 3  # "%25257B" and base64-in-base64: decode a few times, then stop


def hidden_header_hits(scanner: PlaceholderScanner, name: str, value: str,
                       plain: int) -> list[tuple[str, str | None]]:
    """(place, secret) for each placeholder of the first decoding that reveals more of them.

    Every hit of that decoding is reported under the encoded place, which no policy allows, so
    the whole request is refused. `plain` is how many placeholders `value` holds as written
    (the caller has scanned it already).
    """
    place = "basic_credentials" if _is_basic(name, value) else "encoded_header"
    if place == "basic_credentials" and not plain:
        # The one encoding that is understood and swapped (basic_credentials.py): it is
        # reported as the "basic" place, which only secrets with `basic:` in the policy allow.
        secret = basic_secret(scanner, name, value)
        if secret is not None:
            return [(BASIC_PLACE, secret)]
    if "%" not in value and _BASE64_TOKEN.search(value) is None:
        return []  # _decodings would yield nothing: no percent-escape, no base64 run
    for decoded in _decodings_of(value):
        found = scanner.find(decoded)
        if len(found) > plain:
            return [(place, hit.secret) for hit in found]
    return []


def _is_basic(name: str, value: str) -> bool:
    return name.lower() in ("authorization", "proxy-authorization") and \
        value.strip().lower().startswith("basic ")


def _decodings_of(value: str) -> Iterable[str]:
    """`_decodings(value)`, remembered for short values: the same few header values
    (Content-Type, Accept, User-Agent) come with every request."""
    if len(value) <= _CACHED_VALUE_LENGTH:
        return _cached_decodings(value)
    return _decodings(value)


_CACHED_VALUE_LENGTH = 256


@lru_cache(maxsize=1024)  # at most 1,024 values of 256 characters and their decodings
def _cached_decodings(value: str) -> tuple[str, ...]:
    return tuple(_decodings(value))


def _decodings(value: str) -> Iterator[str]:
    frontier = [value]
    for _ in range(MAX_DECODE_ROUNDS):
        following: list[str] = []
        for text in frontier:
            if "%" in text:
                following.append(unquote(text, errors="surrogateescape"))
            following.extend(_base64_decodings(text))
        yield from following
        frontier = following
        if not frontier:
            return


def _base64_decodings(text: str) -> Iterator[str]:
    for match in _BASE64_TOKEN.finditer(text):
        token = match.group().rstrip("=")
        padded = token + "=" * (-len(token) % 4)
        altchars = b"-_" if ("-" in token or "_" in token) else None
        try:
            raw = base64.b64decode(padded, altchars=altchars, validate=altchars is None)
        except (binascii.Error, ValueError):
            continue
        yield raw.decode("latin-1")
