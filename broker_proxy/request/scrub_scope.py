"""Who asks and where the answer comes from: what decides which values an answer is scrubbed
for (scrubbing/grant_scrub.py builds one with ``scope_of``). A plain value, because the verdict
that crosses into the mitmproxy layer (outbound.py) carries one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScrubScope:
    """Who asks and where the answer comes from: what decides an answer's scrub set."""

    grant_id: str
    # The grant's secrets, each with the grant's own placeholder (or None: the policy's).
    held: tuple[tuple[str, str | None], ...]
    host: str | None  # canonical; None: the grant's secrets only
