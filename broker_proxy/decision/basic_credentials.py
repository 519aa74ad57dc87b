"""Placeholders inside ``Authorization: Basic base64(user:password)`` (RFC 7617).

A secret whose policy says ``basic: {username: NAME}`` may be sent as the password of Basic
credentials: the agent sends ``base64(anything:PLACEHOLDER)`` (what ``requests``'
``auth=(user, placeholder)`` or ``curl -u user:placeholder`` produce), the proxy decodes it, and
sends ``base64(NAME:value)``. The user part is always the policy's: the agent cannot choose
whose account the real password is tried against.

Only the clean shape is understood: one standard base64 token, UTF-8, a placeholder that is the
whole password and none in the user part. Anything else stays an encoded placeholder, which
encoded_placeholders.py reports and the broker refuses.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import NamedTuple

from broker_proxy.decision.placeholders import PlaceholderScanner


class BasicCredentials(NamedTuple):
    user: str
    password: str


def parse_basic(value: str) -> BasicCredentials | None:
    parts = value.split()
    if len(parts) != 2 or parts[0].lower() != "basic":
        return None
    try:
        text = base64.b64decode(parts[1], validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, colon, password = text.partition(":")
    return BasicCredentials(user, password) if colon else None


def encode_basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def basic_secret(scanner: PlaceholderScanner, name: str, value: str) -> str | None:
    """The secret named by the whole password of clean Basic credentials in this header."""
    if name.lower() != "authorization":
        return None
    credentials = parse_basic(value)
    if credentials is None or scanner.find(credentials.user):
        return None
    hits = scanner.find(credentials.password)
    if len(hits) != 1 or (hits[0].start, hits[0].end) != (0, len(credentials.password)):
        return None
    return hits[0].secret


def swap_basic(scanner: PlaceholderScanner, name: str, value: str, values: Mapping[str, str],
               usernames: Mapping[str, str]) -> str | None:
    """The header value with the policy's user and the real password; None if not ours."""
    secret = basic_secret(scanner, name, value)
    if secret is None or secret not in values or secret not in usernames:
        return None
    return encode_basic(usernames[secret], values[secret])
