"""The approval desk: requests held for a person, their decisions, and what a decision allows.

A held request costs nothing: the broker holds it before it resolves a secret, reserves a use
or writes a secret-bearing record, and asks the desk again when the person has decided. A
decision allows the one request it was shown (by its digest) and, if the person said so, the
same shape for the next N uses or M minutes of that grant; nothing else.

Held requests and their decisions live in the grant store's hold table (grants/hold_table.py:
SQLite for the processes of a home, Redis for replicas), so any process holds, lists and
decides, and a restart keeps them. The connection that waits is this process's: it is called
back at once when this process decided, and otherwise notices a decision made elsewhere by
polling the table's version (every POLL_S). A proxy that stops answers its waiting connections
503 approval_interrupted and leaves their items pending: the agent's retry of the same request
(same grant, digest and secrets) finds the item, and the decision if one was made meanwhile.
It is thread-safe: the broker holds from the event loop or a worker thread, the admin API
decides from its own threads, and each waiter is called back on the thread that decided or
on the poller's (the addon hops back onto its loop).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from broker_proxy.approvals.digest import RequestShape
from broker_proxy.approvals.preview import shown_digest
from broker_proxy.audit.log import AuditLog
from broker_proxy.grants.hold_table import HoldTable, Item, MemoryHoldTable
from broker_proxy.time_source import utc_now

log = logging.getLogger(__name__)

HoldState = Literal["pending", "allowed", "denied", "timed_out", "abandoned"]
MAX_PENDING = 1000  # a runaway agent must not fill the store with held connections
# Nor may one grant take the whole queue from every other agent's requests.
MAX_PENDING_PER_GRANT = 100
# Decided items stay readable a while (the CLI's "already decided", a retry after a restart).
KEEP_DECIDED = timedelta(days=1)
MAX_APPROVED_USES = 10_000
MAX_APPROVED_MINUTES = 24 * 60
POLL_S = 0.2  # how soon a waiting connection notices a decision another process made
# An expired item nobody waits on (its proxy stopped) is timed out by whoever lists it; one
# that a live connection waits on is timed out by that connection, a moment earlier.
_SWEEP_GRACE = timedelta(seconds=3)


class HoldNotFound(Exception):
    """No held request with this id (never held, or decided long ago)."""


class HoldStateError(Exception):
    """The held request was already decided or timed out; nothing changed."""


class ShownMismatch(Exception):
    """The decision names another preview than this held request's: nothing changed."""


class QueueFull(Exception):
    """MAX_PENDING held requests in all, or MAX_PENDING_PER_GRANT of this grant."""


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
    # Its proxy stopped while it waited: the agent's retry may take it up (desk.resume).
    interrupted: bool = False
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

    def to_item(self) -> Item:
        return {"id": self.id, "grant": self.grant, "agent": self.agent, "task": self.task,
                "secrets": list(self.secrets), "shape": self.shape.to_public_dict(),
                "digest": self.shape.digest, "preview": self.preview,
                "shown_digest": self.shown_digest, "held_at": _iso(self.held_at),
                "expires_at": _iso(self.expires_at), "state": self.state,
                "decided_by": self.decided_by,
                "decided_at": _iso(self.decided_at) if self.decided_at else None,
                "decided_s": self.decided_at.timestamp() if self.decided_at else None,
                "reason": self.reason, "choice": self.choice, "uses": self.uses,
                "minutes": self.minutes, "redeemed": self.redeemed,
                "interrupted": self.interrupted}

    @classmethod
    def from_item(cls, item: Item) -> HeldRequest:
        shape = dict(item["shape"])
        shape["carries"] = tuple(shape["carries"])
        return cls(id=item["id"], grant=item["grant"], agent=item["agent"], task=item["task"],
                   secrets=tuple(item["secrets"]), shape=RequestShape(**shape),
                   preview=item["preview"], shown_digest=item["shown_digest"],
                   held_at=_parse(item["held_at"]), expires_at=_parse(item["expires_at"]),
                   state=item["state"], decided_by=item["decided_by"],
                   decided_at=_parse(item["decided_at"]) if item["decided_at"] else None,
                   reason=item["reason"], choice=item["choice"], uses=item["uses"],
                   minutes=item["minutes"], redeemed=bool(item["redeemed"]),
                   interrupted=bool(item.get("interrupted")))


class ApprovalDesk:
    def __init__(self, audit: AuditLog, clock: Callable[[], datetime] = utc_now,
                 notifier: Notifier | None = None, table: HoldTable | None = None) -> None:
        self._audit = audit
        self._clock = clock
        self.notifier = notifier
        self._table: HoldTable = table if table is not None else MemoryHoldTable()
        # A request can be held where it can be decided: in every process of a shared table
        # (the admin API of any process decides it); with a table of this process alone, only
        # once its admin API serves (run_services.start_approvals). Elsewhere it is refused.
        self.accepting = self._table.shared
        self._lock = threading.Condition()  # the waiters of this process
        self._waiters: dict[str, list[Callable[[HeldRequest], None]]] = {}
        self._poller: threading.Thread | None = None

    @property
    def shared(self) -> bool:
        return self._table.shared

    @property
    def version(self) -> int:
        """Changes on every change of any process (for live views, wait_for_change)."""
        return self._table.version()

    # --- the broker's side -------------------------------------------------------------------

    def full(self, grant: str | None = None) -> bool:
        """No room for another held request (of `grant`, when given)."""
        total, of_grant = self._table.count_pending(grant or "")
        return total >= MAX_PENDING or (grant is not None and of_grant >= MAX_PENDING_PER_GRANT)

    def hold(self, *, grant: str, agent: str, task: str, secrets_: tuple[str, ...],
             shape: RequestShape, timeout: timedelta, audit_fields: dict[str, Any],
             preview: dict[str, Any] | None = None) -> HeldRequest:
        """Record and queue a held request. Raises QueueFull or the audit log's errors before
        anything is queued."""
        now = self._clock()
        preview = preview if preview is not None else {"level": "none"}
        item = HeldRequest(id="h_" + secrets.token_hex(8), grant=grant, agent=agent, task=task,
                           secrets=secrets_, shape=shape, preview=preview,
                           shown_digest=shown_digest(preview), held_at=now,
                           expires_at=now + timeout)
        with self._table.locked():
            # Counted and queued under the lock every process takes: the limits hold in all.
            total, of_grant = self._table.count_pending(grant)
            if total >= MAX_PENDING or of_grant >= MAX_PENDING_PER_GRANT:
                raise QueueFull(grant)
            self._audit.append("request", **audit_fields, hold=item.id, digest=shape.digest,
                               carries=list(shape.carries), shown_digest=item.shown_digest)
            self._table.put(item.to_item())
        self._changed()
        if self.notifier is not None:
            self.notifier.notify(item)  # queued: never waits for the network
        return item

    def redeem(self, hold_id: str | None, grant: str, digest: str) -> bool:
        """Spend the approval of the request that waited for it, if this is that request."""
        if hold_id is None:
            return False
        with self._table.locked():
            raw = self._table.get(hold_id)
            if (raw is None or raw["state"] != "allowed" or raw["redeemed"]
                    or raw["grant"] != grant or raw["digest"] != digest):
                return False
            raw["redeemed"] = True
            self._table.put(raw)
            return True

    def resume(self, grant: str, digest: str, secrets_: tuple[str, ...]) -> HeldRequest | None:
        """The retry of a request whose proxy stopped while it waited takes up its item.

        Pending: it waits again (the same item, no second one). Allowed: its approval is spent
        now, as the waiting request would have spent it. Denied: the refusal is its answer.
        Only an interrupted item is taken up, once; None when there is none.
        """
        if not self._table.shared:
            return None
        now = self._clock()
        with self._table.locked():
            for raw in sorted(self._table.find(grant, digest), key=lambda r: r["held_at"]):
                if not raw.get("interrupted") or tuple(raw["secrets"]) != secrets_:
                    continue
                item = HeldRequest.from_item(raw)
                if item.state == "pending" and item.expires_at <= now:
                    continue  # timed out, but nobody listed it since: a new hold
                if item.state not in ("pending", "allowed", "denied") or item.redeemed:
                    continue
                raw["interrupted"], item.interrupted = False, False
                if item.state == "allowed":
                    raw["redeemed"] = item.redeemed = True
                self._table.put(raw)
                return item
        return None

    def take_allowance(self, grant: str, digest: str) -> bool:
        """Spend one use of a standing "same request, N times / M minutes" approval."""
        now = self._clock()
        with self._table.locked():
            allowance = self._table.get_allowance(grant, digest)
            if allowance is None:
                return False
            uses_left = allowance["uses_left"]
            until = _parse(allowance["until"]) if allowance["until"] else None
            if not ((uses_left is None or uses_left > 0) and (until is None or now < until)):
                self._table.put_allowance(grant, digest, None)
                return False
            if uses_left is not None:
                allowance["uses_left"] = uses_left - 1
                self._table.put_allowance(grant, digest, allowance)
            return True

    def on_decided(self, hold_id: str, callback: Callable[[HeldRequest], None]) -> None:
        """Call back once the request is decided or timed out (at once if it already is)."""
        with self._lock:
            item = self.get(hold_id)
            if item is None:
                raise HoldNotFound(hold_id)
            if item.state == "pending":
                # A decision of another process between the read and now: the poller's next
                # read finds it.
                self._waiters.setdefault(hold_id, []).append(callback)
                self._start_poller()
                return
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
        """The held request ended without a decision: its agent went away (or, with a table of
        this process alone, the proxy is stopping). Recorded (`request_abandoned`), and a later
        approval finds it already ended, so it can neither spend a use nor send anything. None
        if it was decided first, or if its proxy stopped (abandon_all: it waits for the retry,
        also when the agent's disconnect is noticed after)."""
        item = self.get(hold_id)
        if item is not None and item.interrupted:
            return None
        try:
            return self._settle(hold_id, "abandoned", by="broker-proxy", choice="abandoned",
                                reason=why)
        except (HoldStateError, HoldNotFound):
            return None

    def abandon_all(self, why: str) -> list[HeldRequest]:
        """The proxy stops: every request this process holds is answered (by its waiter).

        In a shared table the items stay pending, marked interrupted, for a person to decide
        and the agent's retry to find (resume); in a table of this process alone they end
        here, recorded as abandoned."""
        if not self._table.shared:
            waited = [raw["id"] for raw in self._table.pending()]
            return [item for hold_id in waited if (item := self.abandon(hold_id, why))
                    is not None]
        with self._lock:
            waited = list(self._waiters)
        interrupted: list[HeldRequest] = []
        for hold_id in waited:
            with self._table.locked():
                raw = self._table.get(hold_id)
                if raw is None or raw["state"] != "pending":
                    continue
                raw["interrupted"] = True
                self._table.put(raw)
            item = HeldRequest.from_item(raw)
            interrupted.append(item)
            with self._lock:
                waiters = self._waiters.pop(hold_id, [])
            for waiter in waiters:
                waiter(item)  # pending and interrupted: answered 503 approval_interrupted
        return interrupted

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
        now = self._clock()
        items = [HeldRequest.from_item(raw) for raw in self._table.pending()]
        for item in items:
            if item.interrupted and item.expires_at + _SWEEP_GRACE <= now:
                # Nobody waits on it any more (its proxy stopped): it times out here.
                self.time_out(item.id)
        return sorted((item for item in items
                       if not (item.interrupted and item.expires_at + _SWEEP_GRACE <= now)),
                      key=lambda item: item.held_at)

    def get(self, hold_id: str) -> HeldRequest | None:
        raw = self._table.get(hold_id)
        return HeldRequest.from_item(raw) if raw is not None else None

    def wait_for_change(self, after: int, timeout: float) -> int:
        """Block until `version` passes `after` or the timeout ends; returns the version.

        A change in this process wakes it at once; one of another process within POLL_S."""
        deadline = time.monotonic() + timeout
        while True:
            version = self.version
            left = deadline - time.monotonic()
            if version != after or left <= 0:
                return version
            with self._lock:
                self._lock.wait(min(POLL_S, left))

    # --- inside ------------------------------------------------------------------------------

    def _settle(self, hold_id: str, state: HoldState, *, by: str, choice: str,
                reason: str | None, uses: int | None = None,
                minutes: int | None = None) -> HeldRequest:
        with self._table.locked():
            raw = self._table.get(hold_id)
            if raw is None:
                raise HoldNotFound(hold_id)
            item = HeldRequest.from_item(raw)
            if item.state != "pending":
                raise HoldStateError(f"held request {hold_id} is already {item.state}")
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
            self._table.put(item.to_item())
            if state == "allowed" and ((uses or 1) > 1 or minutes):
                # The held request itself spends the first use (redeem); the rest stand here.
                until = now + timedelta(minutes=minutes) if minutes else None
                self._table.put_allowance(item.grant, item.shape.digest, {
                    "uses_left": (uses - 1) if uses else None,
                    "until": _iso(until) if until else None})
            self._table.purge_decided((now - KEEP_DECIDED).timestamp())
        self._answer(item)
        return item

    def _answer(self, item: HeldRequest) -> None:
        with self._lock:
            waiters = self._waiters.pop(item.id, [])
            self._lock.notify_all()
        for waiter in waiters:
            waiter(item)

    def _changed(self) -> None:
        with self._lock:
            self._lock.notify_all()

    def _start_poller(self) -> None:
        """(Under self._lock.) Decisions of other processes reach this process's waiters."""
        if self._poller is None and self._table.shared:
            self._poller = threading.Thread(target=self._poll, name="held-requests",
                                            daemon=True)
            self._poller.start()

    def _poll(self) -> None:
        seen, failing = -1, False
        while True:
            time.sleep(POLL_S)
            with self._lock:
                waited = list(self._waiters)
                if not waited:
                    self._poller = None
                    return
            try:
                version = self._table.version()
                if version == seen:
                    continue
                seen = version
                ended = [HeldRequest.from_item(raw) for raw in self._table.get_many(waited)
                         if raw["state"] != "pending"]
            except Exception as error:  # the store is away: try again next time
                if not failing:  # one line per outage, not five a second
                    log.warning("held requests: cannot read the store (%s); still trying",
                                type(error).__name__)
                failing = True
                continue
            failing = False
            for item in ended:
                self._answer(item)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def _parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
