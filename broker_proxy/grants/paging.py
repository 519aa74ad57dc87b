"""Listing grants page by page: cursors, page sizes, filtered pages and streamed walks.

Every listing (the admin API, `grant list`, the console) reads the store one page at a time
through its (created_at, id) index (`GrantStore.page`), so none holds every grant: a million
grants cost what one page costs, per page. A filter (agent, secret, state) is applied to the
pages as they are read, and one answer reads at most `SCAN_BUDGET` grants: a rare match far
down the list costs several short answers (each with a `next` cursor), never one that reads
the whole store.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from broker_proxy.grants.model import Grant
from broker_proxy.grants.store import GrantStore, PageKey

DEFAULT_PAGE = 100  # grants per page when the caller names no limit
MAX_PAGE = 1000  # the most a caller may ask for in one page
SCAN_BUDGET = 10_000  # grants read at most for one filtered page
STREAM_BATCH = 500  # grants per store call when a listing is streamed to the end

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CURSOR = re.compile(r"([no]):(\d{1,19}):(g_[0-9a-f]{16})", re.ASCII)


class BadCursor(ValueError):
    """An `after` value that no listing of this API handed out."""


def encode_cursor(key: PageKey, *, newest_first: bool) -> str:
    """Opaque to callers (they pass it back as it is); to us: the order, created_at µs and id,
    so a cursor goes on in the order of the listing that handed it out."""
    micros = (key[0] - _EPOCH) // timedelta(microseconds=1)
    raw = f"{'n' if newest_first else 'o'}:{micros}:{key[1]}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[PageKey, bool]:
    """The key and whether the listing is newest first."""
    if len(text) > 80:
        raise BadCursor("after must be a cursor from a previous page")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadCursor("after must be a cursor from a previous page") from None
    found = _CURSOR.fullmatch(raw)
    if found is None:
        raise BadCursor("after must be a cursor from a previous page")
    key = (_EPOCH + timedelta(microseconds=int(found.group(2))), found.group(3))
    return key, found.group(1) == "n"


@dataclass(frozen=True, slots=True)
class FilteredPage:
    grants: list[Grant]
    next: PageKey | None  # where the next page starts; None once the walk reached the end


def filtered_page(store: GrantStore, keep: Callable[[Grant], bool], *, after: PageKey | None,
                  limit: int, newest_first: bool, budget: int = SCAN_BUDGET) -> FilteredPage:
    """Up to `limit` grants that `keep` accepts, reading at most about `budget` grants.

    The cursor is the last grant returned when the page filled up, else the last grant read:
    the next page goes on from exactly there, so every match is seen once.
    """
    chosen: list[Grant] = []
    read = 0
    position = after
    batch = max(limit, min(STREAM_BATCH, budget))
    while True:
        page = store.page(position, batch, newest_first=newest_first)
        for grant in page.grants:
            if keep(grant):
                chosen.append(grant)
                if len(chosen) == limit:
                    return FilteredPage(chosen, (grant.created_at, grant.id))
        read += len(page.grants)
        if page.next is None:
            return FilteredPage(chosen, None)
        position = page.next
        if read >= budget:
            return FilteredPage(chosen, position)


def walk(store: GrantStore, *, newest_first: bool = False,
         batch: int = STREAM_BATCH) -> Iterator[Grant]:
    """Every grant, one store page at a time: memory holds one page, whatever the store holds."""
    position: PageKey | None = None
    while True:
        page = store.page(position, batch, newest_first=newest_first)
        yield from page.grants
        if page.next is None:
            return
        position = page.next
