"""A record's one byte form, its MAC and the hash that chains the next record onto it."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from broker_proxy.audit.errors import AuditRecordError

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                              allow_nan=False)


def canonical_json(record: dict[str, Any]) -> bytes:
    """The one byte form a record is hashed, MAC'd and stored in.

    ensure_ascii keeps every line pure ASCII: C0, DEL, C1 (a terminal's CSI), U+2028 and lone
    surrogates in agent-controlled strings are all escaped, so `audit tail` cannot be used to
    inject terminal sequences or fake line breaks.
    """
    return _CANONICAL.encode(record).encode("ascii")


def record_mac(key: bytes, record: dict[str, Any]) -> str:
    """HMAC-SHA256 over the canonical JSON of the record without its `mac`."""
    body = {name: value for name, value in record.items() if name != "mac"}
    return hmac.digest(key, canonical_json(body), "sha256").hex()


_MAC_SLOT = '"mac":"' + "0" * 64 + '"'


def seal(key: bytes, record: dict[str, Any]) -> bytes:
    """Set the record's `mac` and return its canonical line, serialising it once, not twice.

    The line is rendered with a stand-in MAC; without that one member it is byte for byte the
    canonical JSON of the record without `mac` (keys are sorted, so only that member and its
    comma differ), which is what the MAC covers. `record_mac` stays the reference that
    `audit verify` recomputes, so a divergence here could not go unnoticed.
    """
    record["mac"] = "0" * 64
    text = _CANONICAL.encode(record)
    at = text.find(_MAC_SLOT)
    # A string value cannot hold the slot: its quotes are escaped. "mac" is never the first
    # key (every record has "agent"), so a comma always precedes the member.
    if at <= 1 or text[at - 1] != "," or text.find(_MAC_SLOT, at + 1) != -1:
        raise AuditRecordError("audit record cannot be sealed")
    body = text[: at - 1] + text[at + len(_MAC_SLOT):]
    mac = hmac.digest(key, body.encode("ascii"), "sha256").hex()
    record["mac"] = mac
    return (text[:at] + '"mac":"' + mac + '"' + text[at + len(_MAC_SLOT):]).encode("ascii")


def line_hash(line: bytes) -> str:
    """What the next record's `prev` holds: SHA-256 of this line's bytes, newline excluded."""
    return hashlib.sha256(line).hexdigest()


def mac_holds(key: bytes, record: dict[str, Any]) -> bool:
    """A rotation record made with our key: a hard-linked old file plus a forged first record
    is not a rotation."""
    mac = record.get("mac")
    try:
        return isinstance(mac, str) and hmac.compare_digest(mac, record_mac(key, record))
    except ValueError:
        return False
