"""Grant tokens: `bpt_<grant_id>_<secret>`, shown once, stored only as a SHA-256 hash.

The grant id inside the token lets the store find the one row to check, so authentication is
a primary-key lookup plus one constant-time compare, not a scan. A plain hash (no salt, no
KDF) is enough because the secret part is 256 random bits: there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

TOKEN_PREFIX = "bpt_"
# Anything longer is not one of ours; refusing it early bounds the work an
# unauthenticated client can make us do per request.
MAX_TOKEN_LENGTH = 200

# token_urlsafe(32) is always 43 characters of the URL-safe base64 alphabet.
_TOKEN_RE = re.compile(r"bpt_(g_[0-9a-f]{16})_([A-Za-z0-9_-]{43})", re.ASCII)


def new_token(grant_id: str) -> str:
    token = f"{TOKEN_PREFIX}{grant_id}_{secrets.token_urlsafe(32)}"
    if parse_token(token) is None:
        raise ValueError(f"grant id {grant_id!r} cannot be put in a token")
    return token


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def parse_token(token: object) -> tuple[str, str] | None:
    """(grant_id, secret part), or None for anything that is not a well-formed token.

    Never raises: its input is whatever a client put in Proxy-Authorization.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_LENGTH:
        return None
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        return None
    return match.group(1), match.group(2)


def token_matches(token: str, stored_hash: bytes) -> bool:
    if len(token) > MAX_TOKEN_LENGTH:
        return False
    # compare_digest so the time taken says nothing about how many bytes matched.
    return hmac.compare_digest(token_hash(token), stored_hash)
