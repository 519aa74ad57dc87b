"""The one clock of the core: aware UTC, so grant expiry never compares naive times."""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)
