"""`GET /v1/grants`: its query parameters, read into one page of grants and the next cursor.

Every form of the listing is paged (paging.py), so no answer holds every grant:

- `limit` (default 100, at most 1000) and `after` (the `X-Next-Cursor` of the previous page);
- without filters the order is oldest first, as it always was; with `agent`, `secret`,
  `state`, `limit` or `offset` it is newest first, as the console's listing always was; a cursor
  goes on in the order of the page that handed it out;
- `pending=true` is `state=pending` in the oldest-first order;
- `state=active` and `state=pending` read only the live grants, through the store's live index
  (their number, not the store's, sets the cost); the other filters read pages of every grant,
  at most SCAN_BUDGET per answer (paging.filtered_page): a page may then hold fewer grants than
  `limit`, even none, and still have a next cursor;
- `offset` still skips that many matches and sets `X-Total-Count`, as before: without a filter
  the store skips by position on its index; with one, the store is walked page by page (memory
  stays one page, the time grows with the store: use `after`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from broker_proxy.grants.model import Grant
from broker_proxy.grants.paging import (
    DEFAULT_PAGE,
    MAX_PAGE,
    BadCursor,
    decode_cursor,
    encode_cursor,
    filtered_page,
    walk,
)
from broker_proxy.grants.store import GrantStore, PageKey

GRANT_STATES = ("pending", "active", "denied", "revoked", "expired", "used_up")
PARAMETERS = frozenset({"pending", "agent", "secret", "state", "limit", "offset", "after"})
_LIVE_STATES = frozenset({"active", "pending"})
_NEWEST_FIRST_PARAMETERS = frozenset({"agent", "secret", "state", "limit", "offset"})


class ListingError(ValueError):
    """A query the listing refuses (400 invalid_request), with the reason."""


@dataclass(frozen=True, slots=True)
class ListingQuery:
    agent: str | None
    secret: str | None
    state: str | None
    limit: int
    offset: int | None
    after: PageKey | None
    newest_first: bool

    def keeps(self, now: datetime) -> Callable[[Grant], bool]:
        def keep(grant: Grant) -> bool:
            return ((self.agent is None or grant.agent == self.agent)
                    and (self.secret is None or self.secret in grant.secrets)
                    and (self.state is None or grant.state_at(now) == self.state))
        return keep


@dataclass(frozen=True, slots=True)
class ListingPage:
    grants: list[Grant]
    next_cursor: str | None  # None: the listing is complete
    total: int | None  # matches in all, only when `offset` asked for the old paging


def parse_query(params: dict[str, list[str]]) -> ListingQuery:
    """The query of `parse_qs(query, keep_blank_values=True)`, checked; ListingError if not."""
    if unknown := set(params) - PARAMETERS:
        raise ListingError(f"unknown parameters: {sorted(unknown)}")
    if any(len(values) != 1 for values in params.values()):
        raise ListingError("each parameter at most once")
    value = {name: values[0] for name, values in params.items()}
    state = value.get("state")
    if state is not None and state not in GRANT_STATES:  # "" is no state either
        raise ListingError(f"state is one of {', '.join(GRANT_STATES)}")
    if "pending" in value:
        if value["pending"] not in ("true", "false"):
            raise ListingError("pending must be true or false")
        if value["pending"] == "true":
            if state not in (None, "pending"):
                raise ListingError("pending=true and state name different states")
            state = "pending"
    numbers: dict[str, int] = {}
    for name in ("limit", "offset"):
        if name in value:
            text = value[name]  # "" is no number
            if not text.isdigit() or len(text) > 9:
                raise ListingError(f"{name} must be a whole number")
            numbers[name] = int(text)
    newest_first = bool(set(params) & _NEWEST_FIRST_PARAMETERS)
    after: PageKey | None = None
    if "after" in value:
        if "offset" in value:
            raise ListingError("after and offset are two ways of paging: use one")
        try:
            after, newest_first = decode_cursor(value["after"])
        except BadCursor as error:
            raise ListingError(str(error)) from None
    return ListingQuery(
        agent=value.get("agent") or None, secret=value.get("secret") or None, state=state,
        limit=max(1, min(numbers.get("limit", DEFAULT_PAGE), MAX_PAGE)),
        offset=numbers.get("offset"), after=after, newest_first=newest_first)


def list_page(store: GrantStore, query: ListingQuery, now: datetime) -> ListingPage:
    keep = query.keeps(now)
    if query.state in _LIVE_STATES:
        return _live_page(store, query, keep, now)
    if query.offset is not None:
        return _offset_page(store, query, keep)
    page = filtered_page(store, keep, after=query.after, limit=query.limit,
                         newest_first=query.newest_first)
    cursor = None if page.next is None else encode_cursor(page.next,
                                                          newest_first=query.newest_first)
    return ListingPage(page.grants, cursor, None)


def _live_page(store: GrantStore, query: ListingQuery, keep: Callable[[Grant], bool],
               now: datetime) -> ListingPage:
    """Active or pending grants: read through the store's live index, so a page costs what the
    live grants cost (a few thousand in a busy store), never the ended ones kept."""
    live = [g for g in store.list(include_inactive=False, now=now) if keep(g)]
    if query.newest_first:
        live.reverse()
    if query.after is not None:
        after = query.after
        live = [g for g in live
                if ((g.created_at, g.id) < after if query.newest_first
                    else (g.created_at, g.id) > after)]
    start = query.offset or 0
    chosen = live[start:start + query.limit]
    cursor = None
    if chosen and len(live) > start + len(chosen):
        cursor = encode_cursor((chosen[-1].created_at, chosen[-1].id),
                               newest_first=query.newest_first)
    return ListingPage(chosen, cursor, len(live) if query.offset is not None else None)


def _offset_page(store: GrantStore, query: ListingQuery,
                 keep: Callable[[Grant], bool]) -> ListingPage:
    """The old paging: skip `offset` matches, take `limit`, count them all (one page held)."""
    assert query.offset is not None
    if query.agent is None and query.secret is None and query.state is None:
        # Every grant matches: the store skips by position on its index and counts there.
        page = store.page(None, query.limit, newest_first=query.newest_first,
                          skip=query.offset)
        cursor = None if page.next is None else encode_cursor(
            page.next, newest_first=query.newest_first)
        return ListingPage(page.grants, cursor, store.total())
    chosen: list[Grant] = []
    total = 0
    for grant in walk(store, newest_first=query.newest_first):
        if not keep(grant):
            continue
        if query.offset <= total < query.offset + query.limit:
            chosen.append(grant)
        total += 1
    cursor = None
    if chosen and total > query.offset + len(chosen):
        last = chosen[-1]
        cursor = encode_cursor((last.created_at, last.id), newest_first=query.newest_first)
    return ListingPage(chosen, cursor, total)
