"""Requests held for a person's approval, as the access report shows them (report.py).

One `HeldItem` per held request (the first few of each grant): what was held, how it ended, who
decided, after how long, and the digest of what the person was shown.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

# How a request held for a person's approval ended (approval: per_request); any other event
# that names a `hold` ends it too, under its own name (request_abandoned, approval_interrupted).
HOLD_OUTCOMES: Final = {"request_approved": "approved", "request_denied": "denied",
                        "request_timed_out": "timed_out"}
# Ends of a hold that refused the request: shown with the grant's refusals under these codes.
HOLD_REFUSALS: Final = {"denied": "request_denied", "timed_out": "approval_timed_out"}


@dataclass(slots=True)
class HeldItem:
    """One request held for a person: what was shown, and how it ended."""

    hold: str
    held_at: str | None
    method: str | None
    target: str
    path: str | None
    secrets: list[str]
    digest: str | None
    ref: str
    outcome: str = "pending"
    choice: str | None = None
    by: str | None = None
    decided_at: str | None = None
    message: str | None = None
    shown: str | None = None  # the digest of what the person was shown (preview)

    def as_dict(self) -> dict[str, Any]:
        waited = _seconds_between(self.held_at, self.decided_at)
        return {"hold": self.hold, "held_at": self.held_at, "method": self.method,
                "target": self.target, "path": self.path, "secrets": self.secrets,
                "digest": self.digest, "outcome": self.outcome, "choice": self.choice,
                "by": self.by, "decided_at": self.decided_at,
                "waited_seconds": round(waited, 3) if waited is not None else None,
                "reason": self.message, "shown_digest": self.shown, "record": self.ref}


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        a = datetime.fromisoformat(start.replace("Z", "+00:00"))
        b = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (b - a).total_seconds()
