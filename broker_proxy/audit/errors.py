"""The audit log's failures: whoever gets an AuditError fails closed (503), never unaudited."""

from __future__ import annotations

from broker_proxy.errors import BrokerError


class AuditError(BrokerError):
    """Base of audit failures; whoever gets one must fail closed (503), never send unaudited."""

    status, code = 503, "audit_unavailable"


class AuditWriteError(AuditError):
    """The log could not be opened, read back or written."""


class AuditTamperedError(AuditWriteError):
    """The file under the log's name is not the log this writer wrote; it refuses from now on."""


class AuditKeyError(AuditError):
    """The audit key is missing, malformed or readable by others."""


class AuditRecordError(AuditError, ValueError):
    """A caller passed a field the record cannot hold (a programming error, not an attack)."""
