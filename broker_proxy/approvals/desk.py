"""The approval desk: requests held for a person, their decisions, and what a decision allows.

A held request costs nothing: the broker holds it before it resolves a secret, reserves a use
or writes a secret-bearing record, and asks the desk again when the person has decided. A
decision allows the one request it was shown (by its digest) and, if the person said so, the
same shape for the next N uses or M minutes of that grant; nothing else.

The desk lives in the proxy process, next to the admin API that decides: held requests are
connections waiting in that process. It is thread-safe: the broker holds from the event loop
or a worker thread, the admin API decides from its own threads, and each waiter is called back
on the thread that decided (the addon hops back onto its loop).
"""

from __future__ import annotations

import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from broker_proxy.approvals.digest import RequestShape
from broker_proxy.approvals.preview import shown_digest
from broker_proxy.audit.log import AuditLog
from broker_proxy.time_source import utc_now

HoldState = Literal["pending", "allowed", "denied", "timed_out", "abandoned"]
MAX_PENDING = 1000  # a runaway agent must not fill memory with held connections
# Nor may one grant take the whole queue from every other agent's requests.
MAX_PENDING_PER_GRANT = 100
_KEEP_DECIDED = 500  # decided items stay readable a while (the CLI's "already decided")
MAX_APPROVED_USES = 10_000
MAX_APPROVED_MINUTES = 24 * 60


class HoldNotFound(Exception):
    """No held request with this id (never held, or decided long ago)."""


class HoldStateError(Exception):
    """The held request was already decided or timed out; nothing changed."""


class ShownMismatch(Exception):
    """The decision names another preview than this held request's: nothing changed."""


class Notifier(Protocol):
    def notify(self, item: HeldRequest) -> None: ...


@dataclass(slots=True)
class HeldRequest:
    id: str
    grant: str
    agent: str
    task: str
    secrets: tuple[str, ...]
    shape: RequestShape
    preview: dict[str, Any]  # what the person is shown (preview.py); no secret value
    shown_digest: str  # its SHA-256, recorded with the hold and the decision
    held_at: datetime
    expires_at: datetime
    state: HoldState = "pending"
    decided_by: str | None = None
    decided_at: datetime | None = None
    reason: str | None = None
    choice: str | None = None  # once | uses | minutes | deny | timeout | abandoned
    uses: int | None = None
    minutes: int | None = None
    redeemed: bool = False  # its own approval was spent by the request that waited for it
    waiters: list[Callable[[HeldRequest], None]] = field(default_factory=list, repr=False)

    def to_public_dict(self) -> dict[str, object]:
        return {"id": self.id, "state": self.state, "grant": self.grant, "agent": self.agent,
                "task": self.task, "secrets": list(self.secrets),
                "request": self.shape.to_public_dict(), "preview": self.preview,
                "shown_digest": self.shown_digest, "held_at": _iso(self.held_at),
                "expires_at": _iso(self.expires_at), "decided_by": self.decided_by,
                "decided_at": _iso(self.decided_at) if self.decided_at else None,
                "choice": self.choice, "reason": self.reason, "uses": self.uses,
                "minutes": self.minutes}


@dataclass(slots=True)
class _Allowance:
    uses_left: int | None  # None: any number until `until`
    until: datetime | None

    def usable(self, now: datetime) -> bool:
        return (self.uses_left is None or self.uses_left > 0) and (
            self.until is None or now < self.until)


class ApprovalDesk:
    def __init__(self, audit: AuditLog, clock: Callable[[], datetime] = utc_now,
                 notifier: Notifier | None = None) -> None:
        self._audit = audit
        self._clock = clock
        self.notifier = notifier
        # Only a process whose admin API serves can have a request decided: elsewhere (extra
        # workers, mitmdump) a held request could only time out, so it is refused at once.
        self.accepting = False
        self._lock = threading.Condition()
        self._pending: dict[str, HeldRequest] = {}
        self._decided: OrderedDict[str, HeldRequest] = OrderedDict()
        self._allowances: dict[tuple[str, str], _Allowance] = {}
        # Bumped on every change, for live views (wait_for_change). It starts at a random
        # number so that a version a client never saw (0, an old process's) answers at once.
        self.version = secrets.randbelow(2**40) + 1

    # --- the broker's side -------------------------------------------------------------------

    def full(self, grant: str | None = None) -> bool:
        """No room for another held request (of `grant`, when given)."""
        with self._lock:
            if len(self._pending) >= MAX_PENDING:
                return True
            return grant is not None and sum(
                1 for item in self._pending.values() if item.grant == grant
            ) >= MAX_PENDING_PER_GRANT

    def hold(self, *, grant: str, agent: str, task: str, secrets_: tuple[str, ...],
             shape: RequestShape, timeout: timedelta, audit_fields: dict[str, Any],
             preview: dict[str, Any] | None = None) -> HeldRequest:
        """Record and queue a held request. Raises the audit log's errors before queueing."""
        now = self._clock()
        preview = preview if preview is not None else {"level": "none"}
        item = HeldRequest(id="h_" + secrets.token_hex(8), grant=grant, agent=agent, task=task,
                           secrets=secrets_, shape=shape, preview=preview,
                           shown_digest=shown_digest(preview), held_at=now,
                           expires_at=now + timeout)
        self._audit.append("request", **audit_fields, hold=item.id, digest=shape.digest,
                           carries=list(shape.carries), shown_digest=item.shown_digest)
        with self._lock:
            self._pending[item.id] = item
            self._changed()
        if self.notifier is not None:
            self.notifier.notify(item)  # queued: never waits for the network
        return item

    def redeem(self, hold_id: str | None, grant: str, digest: str) -> bool:
        """Spend the approval of the request that waited for it, if this is that request."""
        if hold_id is None:
            return False
        with self._lock:
            item = self._decided.get(hold_id)
            if (item is None or item.state != "allowed" or item.redeemed or item.grant != grant
                    or item.shape.digest != digest):
                return False
            item.redeemed = True
            return True

    def take_allowance(self, grant: str, digest: str) -> bool:
        """Spend one use of a standing "same request, N times / M minutes" approval."""
        now = self._clock()
        with self._lock:
            allowance = self._allowances.get((grant, digest))
            if allowance is None:
                return False
            if not allowance.usable(now):
                del self._allowances[(grant, digest)]
                return False
            if allowance.uses_left is not None:
                allowance.uses_left -= 1
            return True

    def on_decided(self, hold_id: str, callback: Callable[[HeldRequest], None]) -> None:
        """Call back once the request is decided or timed out (at once if it already is)."""
        with self._lock:
            item = self._pending.get(hold_id)
            if item is not None:
                item.waiters.append(callback)
                return
            item = self._decided.get(hold_id)
        if item is None:
            raise HoldNotFound(hold_id)
        callback(item)

    def time_out(self, hold_id: str) -> HeldRequest:
        """The waiter gave up: record it, unless a decision came first (that one stands)."""
        try:
            return self._settle(hold_id, "timed_out", by="broker-proxy", choice="timeout",
                                reason="no decision before approval_timeout")
        except HoldStateError:
            item = self.get(hold_id)
            assert item is not None
            return item

    def abandon(self, hold_id: str, why: str) -> HeldRequest | None:
        """The held request ended without a decision: its agent went away, or the proxy is
        stopping. Recorded (`request_abandoned`), and a later approval finds it already ended,
        so it can neither spend a use nor send anything. None if it was decided first."""
        try:
            return self._settle(hold_id, "abandoned", by="broker-proxy", choice="abandoned",
                                reason=why)
        except (HoldStateError, HoldNotFound):
            return None

    def abandon_all(self, why: str) -> list[HeldRequest]:
        """Every pending request abandoned (the proxy stops); their waiters are answered."""
        with self._lock:
            pending = list(self._pending)
        return [item for hold_id in pending if (item := self.abandon(hold_id, why)) is not None]

    # --- the person's side -------------------------------------------------------------------

    def decide(self, hold_id: str, allow: bool, *, by: str, reason: str | None = None,
               uses: int | None = None, minutes: int | None = None,
               shown: str | None = None) -> HeldRequest:
        """Allow (once, or for N uses / M minutes of the same request) or deny.

        `shown`, when the deciding client gives it, is the `shown_digest` of the preview the
        person looked at: a decision about another preview is refused (ShownMismatch).

        Raises HoldNotFound, HoldStateError, ShownMismatch, ValueError (bad counts) or the
        audit log's errors; in every case nothing changed.
        """
        if shown is not None:
            item = self.get(hold_id)
            if item is not None and item.shown_digest != shown:
                raise ShownMismatch(f"held request {hold_id} is not the request you were shown")
        if not allow and (uses is not None or minutes is not None):
            raise ValueError("uses and minutes only go with approve")
        if uses is not None and not 1 <= uses <= MAX_APPROVED_USES:
            raise ValueError(f"uses must be from 1 to {MAX_APPROVED_USES}")
        if minutes is not None and not 1 <= minutes <= MAX_APPROVED_MINUTES:
            raise ValueError(f"minutes must be from 1 to {MAX_APPROVED_MINUTES}")
        choice = "deny" if not allow else "uses" if uses else "minutes" if minutes else "once"
        return self._settle(hold_id, "allowed" if allow else "denied", by=by, choice=choice,
                            reason=reason, uses=uses, minutes=minutes)

    def pending(self) -> list[HeldRequest]:
        with self._lock:
            return sorted(self._pending.values(), key=lambda item: item.held_at)

    def get(self, hold_id: str) -> HeldRequest | None:
        with self._lock:
            return self._pending.get(hold_id) or self._decided.get(hold_id)

    def wait_for_change(self, after: int, timeout: float) -> int:
        """Block until `version` passes `after` or the timeout ends; returns the version."""
        with self._lock:
            self._lock.wait_for(lambda: self.version != after, timeout)
            return self.version

    # --- inside ------------------------------------------------------------------------------

    def _settle(self, hold_id: str, state: HoldState, *, by: str, choice: str,
                reason: str | None, uses: int | None = None,
                minutes: int | None = None) -> HeldRequest:
        with self._lock:
            item = self._pending.get(hold_id)
            if item is None:
                if hold_id in self._decided:
                    raise HoldStateError(f"held request {hold_id} is already "
                                         f"{self._decided[hold_id].state}")
                raise HoldNotFound(hold_id)
            now = self._clock()
            event = {"allowed": "request_approved", "denied": "request_denied",
                     "timed_out": "request_timed_out", "abandoned": "request_abandoned"}[state]
            decision = ("allow" if state == "allowed" else None if state == "abandoned"
                        else "deny")
            # Written under the lock: two people deciding at once get one record, one winner.
            self._audit.append(event, decision=decision,
                               reason=choice, grant=item.grant, agent=item.agent,
                               task=item.task, secrets=list(item.secrets),
                               method=item.shape.method, scheme=item.shape.scheme,
                               host=item.shape.host, port=item.shape.port,
                               path=item.shape.path, by=by, hold=item.id,
                               digest=item.shape.digest, uses=uses, minutes=minutes,
                               message=reason, carries=list(item.shape.carries),
                               shown_digest=item.shown_digest)
            item.state, item.decided_by, item.decided_at = state, by, now
            item.choice, item.reason, item.uses, item.minutes = choice, reason, uses, minutes
            if state == "allowed" and ((uses or 1) > 1 or minutes):
                # The held request itself spends the first use (redeem); the rest stand here.
                self._allowances[(item.grant, item.shape.digest)] = _Allowance(
                    uses_left=(uses - 1) if uses else None,
                    until=now + timedelta(minutes=minutes) if minutes else None)
            del self._pending[hold_id]
            self._decided[hold_id] = item
            while len(self._decided) > _KEEP_DECIDED:
                self._decided.popitem(last=False)
            waiters, item.waiters = item.waiters, []
            self._changed()
        for waiter in waiters:
            waiter(item)
        return item

    def _changed(self) -> None:
        self.version += 1
        self._lock.notify_all()


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
