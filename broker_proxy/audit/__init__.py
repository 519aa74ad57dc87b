"""The tamper-evident audit log: every decision and every secret use, chained and MAC'd."""

from broker_proxy.audit.log import (
    AuditError,
    AuditKeyError,
    AuditLog,
    AuditRecordError,
    AuditWriteError,
)
from broker_proxy.audit.verify import VerifyResult, verify_chain

__all__ = [
    "AuditError",
    "AuditKeyError",
    "AuditLog",
    "AuditRecordError",
    "AuditWriteError",
    "VerifyResult",
    "verify_chain",
]
