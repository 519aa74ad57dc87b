"""Listing many grants page by page, through the real proxy's admin API, the real CLI and the
console in a real browser: every grant once, pages of a bounded size, memory that does not grow
with the store, and the old query parameters still answered."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from benchmarks.grant_scale_bench import mixed_grants
from benchmarks.proc_stats import memory_kib
from broker_proxy.devtools.local_pki import LocalPki
from broker_proxy.grants.paging import DEFAULT_PAGE, MAX_PAGE
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.time_source import utc_now
from tests.conftest import Stack, Upstreams, start_stack

pytestmark = pytest.mark.e2e

GRANTS = 30_000
CHROMIUM = "/usr/bin/chromium"
# What listing every grant may add to a process's peak memory. Listing them all at once, as
# before, took about 1.5 KB per grant in the proxy (1,000,000 grants: 95 -> 1,550 MiB).
GROWTH_MB = 25


@pytest.fixture(scope="module")
def listing_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                  upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("listing"), pki, upstreams)
    with SqliteGrantStore(running.home.grants_db) as store:
        store.load_many(mixed_grants(GRANTS, utc_now()))
    yield running
    running.proxy.stop()


def _admin(stack: Stack, query: str) -> requests.Response:
    token = stack.home.admin_token.read_text().strip()
    answer = requests.get(f"{stack.proxy.admin_url}/v1/grants{query}", timeout=60,
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return answer


def _peak_mb(pid: int) -> float:
    return memory_kib(pid, "VmHWM") / 1024


def test_the_api_pages_through_every_grant_by_cursor_with_bounded_memory(
    listing_stack: Stack,
) -> None:
    pid = listing_stack.proxy.process.pid  # type: ignore[union-attr]
    first = _admin(listing_stack, "")
    assert len(first.json()) == DEFAULT_PAGE and first.headers.get("X-Next-Cursor")
    peak_before = _peak_mb(pid)
    seen: list[str] = []
    cursor: str | None = None
    slowest = 0.0
    while True:
        started = time.monotonic()
        page = _admin(listing_stack, f"?limit=5000{f'&after={cursor}' if cursor else ''}")
        slowest = max(slowest, time.monotonic() - started)
        assert len(page.json()) <= MAX_PAGE
        seen += [grant["id"] for grant in page.json()]
        cursor = page.headers.get("X-Next-Cursor")
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == GRANTS
    created = [g["created_at"] for g in _admin(listing_stack, "?limit=3").json()]
    assert created == sorted(created, reverse=True)  # with limit: newest first, as before
    growth = _peak_mb(pid) - peak_before
    print(f"{GRANTS} grants in pages of {MAX_PAGE}: slowest page {slowest:.2f} s, "
          f"proxy peak RSS {growth:+.1f} MB")
    assert growth < GROWTH_MB, growth
    assert slowest < 5.0


def test_the_old_listing_parameters_still_answer(listing_stack: Stack) -> None:
    pending = _admin(listing_stack, "?pending=true").json()
    assert pending and all(g["state"] == "pending" for g in pending)
    old = _admin(listing_stack, "?limit=20&offset=40&agent=background")
    assert len(old.json()) == 20 and old.headers["X-Total-Count"] == str(GRANTS)
    by_cursor = _admin(listing_stack, "?limit=60&agent=background").json()
    assert [g["id"] for g in old.json()] == [g["id"] for g in by_cursor[40:]]
    revoked = _admin(listing_stack, "?state=revoked&limit=10")
    assert {g["state"] for g in revoked.json()} == {"revoked"}


def _peak_of(args: list[str], env: dict[str, str], out: Path) -> tuple[int, float]:
    """(exit code, peak RSS MB) of a process writing to `out`: VmHWM of its own memory, read
    until it exits (ru_maxrss of a child would include this test process's, from the fork)."""
    with out.open("wb") as sink:
        process = subprocess.Popen(args, stdout=sink, stderr=subprocess.DEVNULL, env=env)
        peak = 0.0
        while process.poll() is None:
            with contextlib.suppress(OSError, LookupError):  # it is exiting
                peak = max(peak, _peak_mb(process.pid))
            time.sleep(0.005)
    return process.returncode, peak


def test_the_cli_streams_every_grant_page_by_page_with_bounded_memory(
    listing_stack: Stack, tmp_path: Path,
) -> None:
    cli = [sys.executable, "-m", "broker_proxy.cli", "--home", str(listing_stack.home.root),
           "grant"]
    _, base_mb = _peak_of([*cli, "show", "g_0123456789abcdef"], listing_stack.env,
                          tmp_path / "one.txt")
    code, peak_mb = _peak_of([*cli, "list", "--json"], listing_stack.env,
                             tmp_path / "grants.json")
    assert code == 0
    listed = json.loads((tmp_path / "grants.json").read_text())
    assert len(listed) == GRANTS and len({g["id"] for g in listed}) == GRANTS
    created = [g["created_at"] for g in listed]
    assert created == sorted(created)  # oldest first
    print(f"grant list --json, {GRANTS} grants: peak RSS {peak_mb:.1f} MB "
          f"(a CLI that reads one grant: {base_mb:.1f} MB)")
    assert peak_mb - base_mb < GROWTH_MB


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("the console tests need Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    opened = context.new_page()
    yield opened
    context.close()


def test_the_console_pages_grants_by_cursor_older_and_back(
    listing_stack: Stack, page: Page,
) -> None:
    page.goto(f"{listing_stack.proxy.admin_url}/ui/")
    page.fill("#token", listing_stack.home.admin_token.read_text().strip())
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()
    page.goto(f"{listing_stack.proxy.admin_url}/ui/#/grants")
    pager = page.locator(".actions span.muted")
    expect(pager).to_contain_text("page 1: 50 grants; older ones follow", timeout=10_000)
    rows = page.locator("#grants tr[data-id]")
    first_page = rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    page.get_by_role("button", name="Older").click()
    expect(pager).to_contain_text("page 2: 50 grants")
    second_page = rows.evaluate_all("rows => rows.map(r => r.dataset.id)")
    assert len(first_page) == len(second_page) == 50
    assert not set(first_page) & set(second_page)
    page.get_by_role("button", name="Newer").click()
    expect(pager).to_contain_text("page 1: 50 grants")
    assert rows.evaluate_all("rows => rows.map(r => r.dataset.id)") == first_page
    # A filter pages the same way: the grants of one state only.
    page.select_option("form.filters select[name=state]", "revoked")
    page.click("form.filters button[type=submit]")
    expect(page.locator("#grants td[class^=state-]").first).to_have_text("revoked")
    expect(pager).to_contain_text("page 1: 50 grants")
    states = page.locator("#grants td[class^=state-]").all_text_contents()
    assert states and set(states) == {"revoked"}
