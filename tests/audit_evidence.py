"""The session's evidence check: every audit log an end-to-end test made must verify.

Each real proxy the tests start (devtools' ProxyProcess) is noted with the test that started it;
at the end of the session every such home's log is checked with the one verifier `audit verify`
uses (chain, MACs, record schema and the home's signed checkpoints), and the session fails on a
bad one. A test that damages a log on purpose says so with `@pytest.mark.audit_tampered`.

conftest.py imports the hooks below; nothing else needs to change for a new test to be covered.
Under pytest-xdist each worker checks the homes its own tests started and hands the verdicts to
the controller (`workeroutput`), which prints one total and fails the run on any bad log.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from broker_proxy.audit.errors import AuditError
from broker_proxy.audit.evidence import default_checkpoints, verify_evidence
from broker_proxy.devtools.proxy_process import ProxyProcess

TAMPERED = "audit_tampered"


@dataclass(slots=True)
class _Started:
    home: Path
    test: str
    tampered: bool


_STARTED: dict[Path, _Started] = {}
_CURRENT: list[pytest.Item] = []
_original_start = ProxyProcess.start


def _noting_start(self: ProxyProcess, *args: Any, **kwargs: Any) -> ProxyProcess:
    item = _CURRENT[-1] if _CURRENT else None
    tampered = item is not None and item.get_closest_marker(TAMPERED) is not None
    seen = _STARTED.get(self.home)
    _STARTED[self.home] = _Started(self.home, item.nodeid if item else "?",
                                   tampered or bool(seen and seen.tampered))
    return _original_start(self, *args, **kwargs)


ProxyProcess.start = _noting_start  # type: ignore[method-assign]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{TAMPERED}: the test damages an audit log on purpose; "
                            "the session's evidence check leaves its logs out")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    # Module-scoped stacks start inside their first test's setup: the test is known then.
    _CURRENT.append(item)
    try:
        return (yield)
    finally:
        _CURRENT.pop()


def bad_audit_logs() -> list[str]:
    """`TEST: HOME/audit.log: verdict` for every noted log that does not verify."""
    problems = []
    for started in _STARTED.values():
        log = started.home / "audit.log"
        if started.tampered or not log.exists():
            continue
        try:
            evidence = verify_evidence(
                log, started.home / "audit.key",
                checkpoints=default_checkpoints(started.home, log))
        except AuditError as error:
            problems.append(f"{started.test}: {log}: {error}")
            continue
        if not evidence.ok:
            problems.append(f"{started.test}: {log}: {evidence.verdict}")
    return problems


_WORKER_KEY = "audit_evidence"  # what each xdist worker hands its controller
_FROM_WORKERS: list[tuple[int, list[str]]] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Under pytest-xdist every worker is a session of its own with its own proxies: it checks
    # the homes it noted and hands the verdicts to the controller, which reports them all.
    problems = bad_audit_logs() if _STARTED else []
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput[_WORKER_KEY] = {"checked": len(_STARTED), "problems": problems}
        return
    checked = len(_STARTED) + sum(count for count, _ in _FROM_WORKERS)
    problems += [problem for _, found in _FROM_WORKERS for problem in found]
    if not checked:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"audit evidence: {checked} proxy home(s) checked, "
                            f"{len(problems)} bad")
        for problem in problems:
            reporter.write_line(f"  {problem}", red=True)
    if problems and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: a worker finished; keep what its evidence check found."""
    found = getattr(node, "workeroutput", {}).get(_WORKER_KEY)
    if found is not None:
        _FROM_WORKERS.append((int(found["checked"]), list(found["problems"])))
    elif error is not None:  # a worker that died checked nothing: its homes are unverified
        _FROM_WORKERS.append((0, [f"{getattr(node, 'gateway', node)}: the worker went down "
                                  f"before its audit evidence check ({error})"]))
