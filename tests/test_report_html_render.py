"""The HTML report renders in a real browser (Debian's headless Chromium) without errors.

Playwright drives the system Chromium (`executable_path`), never a browser it downloads. The
report is built from a log written by the real AuditLog, with hostile strings in it: markup in
a task must show as text, not run.
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

from broker_proxy.audit.log import AuditLog
from broker_proxy.cli import main
from broker_proxy.devtools.browser import find_chromium


def write_story(home: Path) -> None:
    home.mkdir(mode=0o700, exist_ok=True)
    log = AuditLog.open(home / "audit.log", home / "audit.key")
    grant = {"grant": "g_1", "agent": "bot", "task": "<script>alert(1)</script> sync"}
    log.append("grant_issued", decision="allow", reason="issued", by="alice",
               secrets=["github"], expires_at="2030-01-01T00:00:00Z", max_uses=5,
               grant_status="active", **grant)
    for index in range(4):
        log.append("request", decision="allow", reason="injected", secrets=["github"],
                   method="GET", scheme="https", host="api.github.com", port=443,
                   path=f"/repos/acme/{index % 2}", **grant)
        log.append("response", decision="allow", reason="injected", secrets=["github"],
                   grant="g_1", method="GET", scheme="https", host="api.github.com", port=443,
                   path=f"/repos/acme/{index % 2}", status=200, duration_ms=3.0,
                   redactions=1 if index == 0 else 0)
    log.append("request", decision="deny", reason="destination_not_allowed", secrets=[],
               method="POST", scheme="https", host="paste.example.net", port=443,
               path="/up", status=403, **grant)
    log.append("grant_revoked", decision="deny", reason="revoke", by="alice",
               secrets=["github"], **grant)
    log.close()


def test_html_report_renders_in_chromium_without_console_errors(tmp_path: Path) -> None:
    # A missing browser fails the test rather than skipping it (make test installs or names it).
    chromium = find_chromium()
    home = tmp_path / "home"
    write_story(home)
    out = tmp_path / "report.html"
    assert main(["--home", str(home), "audit", "report", "--format", "html", "-o", str(out)]) == 0
    problems: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 800})
            page.on("console", lambda message: problems.append(message.text)
                    if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: problems.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.on("dialog", lambda dialog: problems.append(f"dialog: {dialog.message}"))
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            banner = page.inner_text("#integrity")
            charts = page.locator("svg").count()
            bars = page.locator("svg rect").count()
            task_text = page.inner_text("h3")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        finally:
            browser.close()
    assert problems == []
    assert requests == [out.as_uri()], "the report fetched something besides itself"
    assert banner.startswith("INTEGRITY OK: 11 records verify")
    assert charts == 2 and bars >= 2
    assert "<script>alert(1)</script> sync" in task_text  # shown as text, never run
    assert (tmp_path / "report.png").stat().st_size > 1000


def test_html_report_keeps_long_paths_inside_the_page_and_says_what_empty_means(
        tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_story(home)
    log = AuditLog.open(home / "audit.log", home / "audit.key")
    grant = {"grant": "g_2", "agent": "bot", "task": "sync " + "very-long-word-" * 12}
    log.append("grant_issued", decision="allow", reason="issued", by="alice",
               secrets=["github"], expires_at="2030-01-01T00:00:00Z", max_uses=5,
               grant_status="active", **grant)
    for _ in range(2):  # injected, and no answer came back (no response record)
        log.append("request", decision="allow", reason="injected", secrets=["github"],
                   method="GET", scheme="https", host="api.github.com", port=443,
                   path="/repos/acme/" + "x" * 200, **grant)
        log.append("response", decision="allow", reason="injected", secrets=["github"],
                   grant="g_2", method="GET", scheme="https", host="api.github.com", port=443,
                   path="/repos/acme/" + "x" * 200, duration_ms=3.0)
    log.append("grant_issued", decision="allow", reason="issued", by=None, secrets=["github"],
               expires_at="2030-01-01T00:00:00Z", max_uses=5, grant_status="pending",
               grant="g_3", agent="bot2", task="never used")
    log.close()
    out = tmp_path / "report.html"
    assert main(["--home", str(home), "audit", "report", "--format", "html", "-o", str(out)]) == 0
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=find_chromium(), headless=True)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(out.as_uri())
            overflow = page.evaluate("document.documentElement.scrollWidth - innerWidth")
            text = page.inner_text("body")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert overflow <= 0, f"the report is {overflow}px wider than the window"
    assert "nonex" not in text and "None" not in text
    assert "no answer x2" in text
    lines = [line.strip() for line in text.splitlines()]
    assert "none" not in lines and "no secret used" in lines


def test_text_report_tables_line_up_and_csv_never_says_none(tmp_path: Path) -> None:
    home = tmp_path / "home"
    write_story(home)
    log = AuditLog.open(home / "audit.log", home / "audit.key")
    log.append("grant_issued", decision="allow", reason="issued", by=None, secrets=["github"],
               expires_at="2030-01-01T00:00:00Z", max_uses=None, grant_status="pending",
               grant="g_long_one", agent="a-much-longer-agent-name", task="t")
    log.close()
    text_out, csv_out = tmp_path / "r.txt", tmp_path / "r.csv"
    for fmt, out in (("text", text_out), ("csv", csv_out)):
        assert main(["--home", str(home), "audit", "report", "--format", fmt,
                     "-o", str(out)]) == 0
    lines = text_out.read_text().splitlines()
    start = lines.index("PER AGENT") + 1
    table = lines[start:start + 3]
    # every column starts at the same offset on every row
    header = table[0]
    for column in ("grants", "uses", "refusals"):
        end = header.index(column) + len(column)
        assert all(row[end - 1] != " " and (len(row) == end or row[end] == " ")
                   for row in table[1:]), table
    assert "None" not in csv_out.read_text()
