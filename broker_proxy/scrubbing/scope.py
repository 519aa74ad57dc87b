"""Who asks and where the answer comes from: what decides which values an answer is scrubbed
for (see grant_scrub.py). Its own module, depending on nothing but the grant model, because the
verdict that crosses into the mitmproxy layer (decision/outbound.py) carries one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing the grants package here would close an import cycle via policy
    from broker_proxy.grants.model import Grant


@dataclass(frozen=True, slots=True)
class ScrubScope:
    """Who asks and where the answer comes from: what decides an answer's scrub set."""

    grant_id: str
    # The grant's secrets, each with the grant's own placeholder (or None: the policy's).
    held: tuple[tuple[str, str | None], ...]
    host: str | None  # canonical; None: the grant's secrets only

    @classmethod
    def of(cls, grant: Grant, host: str | None) -> ScrubScope:
        return cls(grant.id, tuple((name, grant.placeholder_of(name)) for name in grant.secrets),
                   host)
