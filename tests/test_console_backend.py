"""The console's server side without a browser: sessions, login links, the audit index."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from broker_proxy.console.audit_index import SCAN_LIMIT, AuditIndex
from broker_proxy.console.sessions import ConsoleSessions


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def test_a_session_expires_and_its_csrf_token_must_match() -> None:
    clock = Clock()
    sessions = ConsoleSessions(timedelta(minutes=10), clock)
    cookie, session = sessions.start("alice")
    assert sessions.get(cookie) == session and session.name == "alice"
    assert session.csrf_matches(session.csrf)
    assert not session.csrf_matches(None) and not session.csrf_matches("x" + session.csrf)
    assert sessions.get("forged") is None
    clock.now += timedelta(minutes=10)
    assert sessions.get(cookie) is None


def test_a_login_link_works_once_and_not_after_two_minutes() -> None:
    clock = Clock()
    sessions = ConsoleSessions(clock=clock)
    code = sessions.new_login_link("alice")
    assert sessions.redeem_login_link(code) == "alice"  # the link signs in as who asked for it
    assert sessions.redeem_login_link(code) is None
    late = sessions.new_login_link("bob")
    clock.now += timedelta(minutes=2, seconds=1)
    assert sessions.redeem_login_link(late) is None


def _record(seq: int, grant: str) -> bytes:
    return json.dumps({"seq": seq, "event": "request", "decision": "allow" if seq % 2 else "deny",
                       "reason": "injected", "grant": grant, "agent": f"a{seq % 7}",
                       "secrets": ["k"] if seq % 3 == 0 else []},
                      separators=(",", ":"), sort_keys=True).encode() + b"\n"


def test_audit_pages_are_newest_first_filtered_and_continue_where_they_stopped(
        tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_record(n, f"g_{n % 5:016x}") for n in range(1000)))
    index = AuditIndex(log)
    first = index.page({}, None, 10)
    assert [r["seq"] for r in first.records] == list(range(999, 989, -1))
    second = index.page({}, first.next_before, 10)
    assert [r["seq"] for r in second.records] == list(range(989, 979, -1))
    mine = index.page({"grant": f"g_{3:016x}", "decision": "deny"}, None, 5)
    assert [r["seq"] for r in mine.records] == [998, 988, 978, 968, 958]
    assert [r["seq"] for r in index.page({"secret": "k", "agent": "a0"}, None, 3).records] == [
        987, 966, 945]
    # Appended records show up on the next page read, a torn tail waits for its newline.
    with open(log, "ab") as file:
        file.write(_record(1000, "g_new0000000000000") + b'{"seq":10')
    assert index.page({}, None, 1).records[0]["seq"] == 1000
    # A rotated (replaced) file is indexed anew.
    log.unlink()
    log.write_bytes(_record(0, "g_0000000000000000"))
    assert [r["seq"] for r in index.page({}, None, 10).records] == [0]


def test_a_rare_filter_answers_with_a_cursor_instead_of_reading_everything(
        tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    log.write_bytes(b"".join(_record(n, "g_0000000000000001") for n in range(SCAN_LIMIT + 10)))
    page = AuditIndex(log).page({"agent": "nobody"}, None, 50)
    assert page.records == [] and page.next_before == 10


def test_a_million_record_log_pages_quickly(tmp_path: Path) -> None:
    """Prints the figures; only absurd ones fail (the machine is shared)."""
    log = tmp_path / "audit.log"
    with open(log, "wb") as file:
        for chunk in range(100):
            file.write(b"".join(_record(n, f"g_{n % 10_000:016x}")
                                for n in range(chunk * 10_000, (chunk + 1) * 10_000)))
    index = AuditIndex(log)
    started = time.perf_counter()
    index.page({}, None, 50)
    built = time.perf_counter() - started
    started = time.perf_counter()
    newest = index.page({}, None, 50)
    grant = index.page({"grant": f"g_{1234:016x}"}, None, 50)
    paged = time.perf_counter() - started
    assert newest.records[0]["seq"] == 999_999 and len(grant.records) == 50
    print(f"1M records: index built in {built:.2f} s, two pages in {paged * 1000:.1f} ms")
    assert paged < 2.0
