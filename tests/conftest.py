"""Shared fixtures: isolation from the developer's keyring and home, and the e2e stack.

The end-to-end stack is the real thing: local HTTPS servers with their own CA, a real
`broker-proxy run` process, and real clients. Secret values are random per test run.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import keyring
import pytest
from keyring.backends import null

from broker_proxy.devtools import prefork
from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.devtools.redis_server import RedisServer
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import ENV_VAR as MASTER_KEY_ENV
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now

# Every audit log an end-to-end test makes is verified at the end of the session.
from tests.audit_evidence import (  # noqa: F401 (pytest finds the hooks by name here)
    pytest_configure,
    pytest_runtest_protocol,
    pytest_sessionfinish,
    pytest_testnodedown,
)
from tests.decision_setup import setup  # noqa: F401 (the decision tests' broker, for every module)
from tests.master_keys import random_master_key
from tests.replay_property import assert_replay_unchanged

API_HOST = "api.test.local"
OTHER_HOST = "other.test.local"
EVIL_HOST = "evil.test.local"
EGRESS_HOST = "pypi.test.local"
UNTRUSTED_HOST = "untrusted.test.local"
HOSTS = (API_HOST, OTHER_HOST, EVIL_HOST, EGRESS_HOST, UNTRUSTED_HOST)

# Process-wide isolation: no test may read or write the developer's keyring or home.
os.environ["PYTHON_KEYRING_BACKEND"] = "keyring.backends.null.Keyring"
os.environ.pop("BROKER_PROXY_HOME", None)
os.environ.pop("BROKER_PROXY_POLICY", None)
for _variable in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_variable, None)
    os.environ.pop(_variable.lower(), None)
keyring.set_keyring(null.Keyring())


# The slowest files: seconds each took in one 2-worker run of the whole suite on a loaded 2-core
# machine (summed per file like `--durations=0`; files over 15 s). A module may instead say
# `pytestmark = pytest.mark.slow(N)`.
SLOW_MODULES = {
    "tests/test_benchmarks_smoke.py": 87,
    "tests/test_e2e_audit_metrics.py": 70,
    "tests/test_e2e_worker_supervision.py": 66,
    "tests/test_scrubber_differential.py": 60,
    "tests/test_e2e_audit_recovery.py": 53,
    "tests/test_e2e_mitmdump_script.py": 47,
    "tests/test_e2e_held_store.py": 46,
    "tests/test_e2e_example_policies.py": 42,
    "tests/test_e2e_readiness_faults.py": 42,
    "tests/test_scrubber.py": 41,
    "tests/test_e2e_rate_limits.py": 38,
    "tests/test_console_approvals_browser.py": 37,
    "tests/test_e2e_replicas.py": 33,
    "tests/test_admin_api.py": 33,
    "tests/test_console_oidc_browser.py": 33,
    "tests/test_e2e_audit_report.py": 32,
    "tests/security/test_e2e_exposure.py": 30,
    "tests/test_console_browser.py": 29,
    "tests/security/test_e2e_deadlines.py": 29,
    "tests/test_audit_export.py": 29,
    "tests/test_e2e_budget_exactness.py": 27,
    "tests/test_console_backend.py": 26,
    "tests/test_e2e_grant_retention.py": 22,
    "tests/test_e2e_held_replicas.py": 22,
    "tests/test_e2e_policy_scale.py": 21,
    "tests/test_e2e_report_actions.py": 21,
    "tests/test_e2e_upstream_failures.py": 21,
    "tests/security/test_e2e_bounds.py": 20,
    "tests/test_e2e_request_approval.py": 19,
    "tests/test_policy_reload.py": 18,
    "tests/test_policy_init.py": 18,
    "tests/test_e2e_grant_listing.py": 18,
    "tests/test_e2e_token_caps.py": 17,
    "tests/test_exec.py": 17,
    "tests/test_grant_store.py": 17,
    "tests/test_e2e_scrubbing.py": 16,
    "tests/security/test_e2e_forms.py": 16,
    "tests/test_packaging.py": 16,
    "tests/test_e2e_otlp.py": 16,
    "tests/test_e2e_report_llm.py": 16,
    "tests/test_e2e_first_hour.py": 16,
}


def _slow_seconds(item: pytest.Item) -> float:
    module = item.getparent(pytest.Module)
    marker = module.get_closest_marker("slow") if module is not None else None
    return float(marker.args[0]) if marker is not None and marker.args else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The modules in SLOW_MODULES are marked `slow`; under pytest-xdist they run first.

    `make test` hands each file to one worker (--dist loadfile) in collection order; a long file
    handed out last would leave the other workers idle at the end, so the slowest go first. A
    module keeps its tests together (its module-scoped stack starts once); a serial run keeps
    the file order. `-m "not slow"` leaves them out.
    """
    for module in {item.getparent(pytest.Module) for item in items} - {None}:
        relative = module.path.relative_to(config.rootpath).as_posix()
        if relative in SLOW_MODULES and module.get_closest_marker("slow") is None:
            module.add_marker(pytest.mark.slow(SLOW_MODULES[relative]))
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: -_slow_seconds(item))  # stable: files stay whole


# Playwright's `expect` waits 5 s by default; under `make test` two cores carry the workers,
# their proxies and Chromium, and a console's long poll can take longer than that to redraw.
BROWSER_EXPECT_TIMEOUT_MS = 20_000


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Browser tests wait as long as a loaded machine needs (set once playwright is imported:
    the other workers do not pay for importing it)."""
    playwright = sys.modules.get("playwright.sync_api")
    if playwright is not None:
        playwright.expect.set_options(timeout=BROWSER_EXPECT_TIMEOUT_MS)


@pytest.fixture
def no_real_keyring(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The null keyring and no master key from the environment, for tests that install their
    own keyring backend or key: whatever they install is undone after each test."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.null.Keyring")
    monkeypatch.delenv(MASTER_KEY_ENV, raising=False)
    previous = keyring.get_keyring()
    keyring.set_keyring(null.Keyring())
    yield
    keyring.set_keyring(previous)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> LocalPki:
    return write_pki(tmp_path_factory.mktemp("pki"), list(HOSTS))


@dataclass
class Upstreams:
    api: EchoServer  # https, allowed for api_key
    other: EchoServer  # https, allowed for other_key
    evil: EchoServer  # https, allowed for nothing
    egress: EchoServer  # https, on the egress allow-list
    plain: EchoServer  # plain http under API_HOST's name
    untrusted: EchoServer  # https with a certificate from a CA the proxy does not trust

    def all(self) -> list[EchoServer]:
        return [self.api, self.other, self.evil, self.egress, self.plain, self.untrusted]

    def clear(self) -> None:
        for server in self.all():
            server.clear()


@pytest.fixture(scope="session")
def upstreams(pki: LocalPki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstreams]:
    rogue = write_pki(tmp_path_factory.mktemp("rogue-pki"), list(HOSTS))
    servers = Upstreams(
        api=EchoServer(pki.cert_path, pki.key_path).start(),
        other=EchoServer(pki.cert_path, pki.key_path).start(),
        evil=EchoServer(pki.cert_path, pki.key_path).start(),
        egress=EchoServer(pki.cert_path, pki.key_path).start(),
        plain=EchoServer().start(),
        untrusted=EchoServer(rogue.cert_path, rogue.key_path).start(),
    )
    yield servers
    for server in servers.all():
        server.stop()


E2E_POLICY = """\
version: 1
secrets:
  api_key:
    from: vault
    destinations:
      - host: {api}
        port: {api_port}
        methods: [GET, POST]
        paths: ["/v1/**"]
      - host: {api}
        port: {plain_port}
        scheme: https
      - host: {untrusted}
        port: {untrusted_port}
    inject: [header, query]
    env: API_KEY
  other_key:
    from: env:E2E_OTHER_KEY
    placeholder: "other-PLACEHOLDER-0000"
    destinations:
      - host: {other}
        port: {other_port}
agents:
  bot:
    secrets: [api_key, other_key]
    max_ttl: 1h
  careful-bot:
    secrets: [api_key]
    max_ttl: 1h
    approval: [api_key]
egress:
  allow: [{egress}]
network:
  allow_addresses: [127.0.0.0/8]
"""


@dataclass
class Stack:
    """One running proxy with its home, policy, secrets and upstreams."""

    root: Path
    home: Home
    policy_file: Path
    proxy: ProxyProcess
    upstreams: Upstreams
    api_key: str
    other_key: str
    env: dict[str, str]

    def issue(self, *secret_names: str, ttl: timedelta | None = None, max_uses: int | None = None,
              agent: str = "bot") -> IssuedGrant:
        store = SqliteGrantStore(self.home.grants_db)
        try:
            return issue_grant(load_policy(self.policy_file), store, agent=agent,
                               task="e2e test", secrets=list(secret_names or ["api_key"]),
                               ttl=ttl, max_uses=max_uses, now=utc_now(),
                               proxy_url_base=self.proxy.info["listen"])
        finally:
            store.close()

    def revoke(self, grant_id: str) -> None:
        store = SqliteGrantStore(self.home.grants_db)
        try:
            store.revoke(grant_id, utc_now())
        finally:
            store.close()

    def url(self, server: EchoServer, host: str, path: str) -> str:
        return f"{server.scheme}://{host}:{server.port}{path}"

    def secret_values(self) -> list[str]:
        return [self.api_key, self.other_key]


@contextlib.contextmanager
def master_key_in_environment(key: str) -> Iterator[None]:
    """The master key where `load_or_create_master_key` looks, only while the vault is set up.

    The proxy process gets the key in its own environment; this process's environment is left
    as it was, so no test depends on what an earlier module's stack left behind.
    """
    previous = os.environ.get("BROKER_PROXY_MASTER_KEY")
    os.environ["BROKER_PROXY_MASTER_KEY"] = key
    try:
        yield
    finally:
        if previous is None:
            del os.environ["BROKER_PROXY_MASTER_KEY"]
        else:
            os.environ["BROKER_PROXY_MASTER_KEY"] = previous


def start_stack(root: Path, pki: LocalPki, upstreams: Upstreams,
                extra_args: tuple[str, ...] = (), policy: str = E2E_POLICY,
                resolve_hosts: tuple[str, ...] = HOSTS) -> Stack:
    root.mkdir(parents=True, exist_ok=True)
    home = Home(root / "home").ensure()
    api_key = "sk-e2e-" + secrets.token_urlsafe(24)
    other_key = "ok-e2e-" + secrets.token_urlsafe(24)
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               E2E_OTHER_KEY=other_key)
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        Vault(home.vault, load_or_create_master_key(home, create=True)).set("api_key", api_key)
    policy_file = root / "policy.yaml"
    policy_file.write_text(policy.format(
        api=API_HOST, api_port=upstreams.api.port, plain_port=upstreams.plain.port,
        other=OTHER_HOST, other_port=upstreams.other.port, egress=EGRESS_HOST,
        untrusted=UNTRUSTED_HOST, untrusted_port=upstreams.untrusted.port))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={host: "127.0.0.1" for host in resolve_hosts}, env=env,
                         extra_args=extra_args, log_path=root / "proxy.log").start()
    return Stack(root, home, policy_file, proxy, upstreams, api_key, other_key, env)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
          upstreams: Upstreams) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("stack"), pki, upstreams)
    yield running
    running.proxy.stop()
    # Invariant 1 (docs/ARCHITECTURE.md): no secret value in anything the proxy wrote.
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in running.secret_values():
        assert value not in written, "a secret value reached the proxy's log or audit log"
    assert_replay_unchanged(running.home.audit_log, running.policy_file)


@pytest.fixture(autouse=True)
def _clear_upstreams(request: pytest.FixtureRequest) -> None:
    if "stack" in request.fixturenames:
        request.getfixturevalue("upstreams").clear()


@pytest.fixture(scope="session", autouse=True)
def prefork_launcher() -> Iterator[None]:
    """`python -m broker_proxy.cli` processes of the shared helpers (ProxyProcess, the tests' CLI
    calls) fork from a pre-imported zygote per test process: imports cost 0.15-0.7 s a start.
    BROKER_PROXY_TEST_PREFORK=0 execs a fresh interpreter for each, as before. A fixture, not an
    import-time switch: the benchmarks import this module and keep plain exec."""
    prefork.enable(os.environ.get("BROKER_PROXY_TEST_PREFORK", "1") != "0")
    yield
    prefork.enable(False)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server on a free port; a missing binary fails the tests, never skips."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def curl_path() -> str:
    path = shutil.which("curl")
    if path is None:  # pragma: no cover - curl is part of the machine image
        pytest.fail("curl is required for the end-to-end tests")
    return path


PYTHON = sys.executable
