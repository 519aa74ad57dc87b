"""Listing pages of both grant stores: keyed by (created_at, id), every grant seen once, in
either order, also when grants share an instant or the cursor's grant was purged; filtered
pages read a bounded number of grants; the API's query parameters and cursors."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.listing import ListingError, list_page, parse_query
from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.paging import (
    MAX_PAGE,
    BadCursor,
    decode_cursor,
    encode_cursor,
    filtered_page,
    walk,
)
from broker_proxy.grants.redis_store import RedisGrantStore
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.grants.store import GrantStore
from tests.test_grant_store import NOW, make_grant


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[GrantStore]:
    if request.param == "sqlite":
        with SqliteGrantStore(tmp_path / "grants.db") as sqlite:
            yield sqlite
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        with RedisGrantStore(server.url) as redis_store:
            redis_store._client.flushdb()
            yield redis_store


def _fill(store: GrantStore, count: int, *, same_instant: int = 0) -> list[Grant]:
    """`count` grants a second apart, then `same_instant` more all created at one instant."""
    grants = [make_grant(created_at=NOW + timedelta(seconds=i))[0] for i in range(count)]
    grants += [make_grant(created_at=NOW + timedelta(seconds=count))[0]
               for _ in range(same_instant)]
    for grant in grants:
        store.create(grant)
    return sorted(grants, key=lambda g: (g.created_at, g.id))


def _all_pages(store: GrantStore, limit: int, newest_first: bool) -> list[list[str]]:
    pages, after = [], None
    while True:
        page = store.page(after, limit, newest_first=newest_first)
        pages.append([g.id for g in page.grants])
        if page.next is None:
            return pages
        after = page.next


@pytest.mark.parametrize("newest_first", [False, True])
def test_pages_cover_every_grant_once_in_order_also_at_one_instant(
    store: GrantStore, newest_first: bool,
) -> None:
    expected = [g.id for g in _fill(store, 23, same_instant=12)]
    if newest_first:
        expected.reverse()
    pages = _all_pages(store, 5, newest_first)
    assert [gid for page in pages for gid in page] == expected
    assert all(len(page) == 5 for page in pages[:-1])
    assert [g.id for g in walk(store, newest_first=newest_first, batch=7)] == expected


@pytest.mark.parametrize("newest_first", [False, True])
def test_a_cursor_whose_grant_was_purged_goes_on_from_where_it_was(
    store: GrantStore, newest_first: bool,
) -> None:
    grants = _fill(store, 6, same_instant=6)
    ordered = grants[::-1] if newest_first else grants
    first = store.page(None, 7, newest_first=newest_first)
    assert first.next is not None and first.next[1] == ordered[6].id
    gone = replace(ordered[6], status=GrantStatus.REVOKED, revoked_at=NOW)
    store.revoke(gone.id, NOW)
    assert store.purge([gone.id], NOW + timedelta(hours=1)) == 1
    rest = store.page(first.next, 100, newest_first=newest_first)
    assert [g.id for g in rest.grants] == [g.id for g in ordered[7:]]
    assert rest.next is None


def test_a_filtered_page_reads_at_most_its_budget_and_hands_back_where_it_stopped(
    store: GrantStore,
) -> None:
    grants = _fill(store, 40)
    wanted = grants[35]
    store.revoke(wanted.id, NOW)
    revoked = lambda g: g.status is GrantStatus.REVOKED  # noqa: E731
    page = filtered_page(store, revoked, after=None, limit=10, newest_first=False, budget=20)
    assert page.grants == [] and page.next is not None  # nothing in the first stretch
    assert page.next[1] == grants[19].id
    page = filtered_page(store, revoked, after=page.next, limit=10, newest_first=False,
                         budget=20)
    assert [g.id for g in page.grants] == [wanted.id] and page.next is None


def test_the_listing_query_pages_by_cursor_and_keeps_the_old_parameters(
    store: GrantStore,
) -> None:
    grants = _fill(store, 30)
    store.revoke(grants[3].id, NOW)
    now = NOW + timedelta(minutes=1)
    plain = list_page(store, parse_query({}), now)  # oldest first, the default page size
    assert [g.id for g in plain.grants] == [g.id for g in grants] and plain.next_cursor is None
    first = list_page(store, parse_query({"limit": ["12"]}), now)  # newest first
    assert [g.id for g in first.grants] == [g.id for g in grants[::-1][:12]]
    assert first.next_cursor is not None and first.total is None
    second = list_page(store, parse_query({"after": [first.next_cursor]}), now)
    assert [g.id for g in second.grants] == [g.id for g in grants[::-1][12:]]
    old = list_page(store, parse_query({"limit": ["5"], "offset": ["10"]}), now)
    assert [g.id for g in old.grants] == [g.id for g in grants[::-1][10:15]]
    assert old.total == 30 and old.next_cursor is not None
    walked = list_page(store, parse_query({"limit": ["5"], "offset": ["10"],
                                          "agent": ["research-bot"]}), now)
    assert walked.grants == old.grants and walked.total == 30
    assert list_page(store, parse_query({"offset": ["29"]}), now).next_cursor is None
    assert store.total() == 30
    revoked = list_page(store, parse_query({"state": ["revoked"]}), now)
    assert [g.id for g in revoked.grants] == [grants[3].id]
    assert list_page(store, parse_query({"pending": ["true"]}), now).grants == []


def test_listing_parameters_and_cursors_are_checked() -> None:
    key = (NOW, "g_0123456789abcdef")
    assert decode_cursor(encode_cursor(key, newest_first=True)) == (key, True)
    assert decode_cursor(encode_cursor(key, newest_first=False)) == (key, False)
    for bad in ("", "x", "not a cursor", "eDoxOmdfMDEyMzQ1Njc4OWFiY2RlZg", "A" * 200):
        with pytest.raises(BadCursor):
            decode_cursor(bad)
    assert parse_query({"limit": ["100000"]}).limit == MAX_PAGE
    assert parse_query({"limit": ["0"]}).limit == 1
    for params in ({"limit": [""]}, {"after": ["nope"]}, {"state": [""]}, {"order": ["x"]},
                   {"pending": ["maybe"]}, {"limit": ["1", "2"]},
                   {"after": [encode_cursor(key, newest_first=True)], "offset": ["3"]}):
        with pytest.raises(ListingError):
            parse_query(params)
