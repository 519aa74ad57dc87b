"""One proxy in front of the LLM stand-in (llm_upstream.py), and the real SDKs pointed at it.

The SDKs run in this process with base_url on the real host names and an httpx client that goes
through the proxy (what HTTPS_PROXY would give them), trusting the proxy's CA.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import ssl
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from broker_proxy.devtools.echo_server import EchoServer
from broker_proxy.devtools.local_pki import LocalPki, write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import IssuedGrant, issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.master_key import load_or_create_master_key
from broker_proxy.secrets.vault import Vault
from broker_proxy.time_source import utc_now
from tests.conftest import master_key_in_environment, random_master_key
from tests.llm_upstream import LLM_HOSTS, llm_reply

# The SDKs take about 2 s of CPU to import: they are imported where they are used, so that
# collecting the suite (once per pytest-xdist worker) does not pay for them.
if TYPE_CHECKING:
    import anthropic
    import openai

PLACEHOLDERS = {"openai": "sk-proj-PLACEHOLDER-openai-0000000000",
                "anthropic": "sk-ant-PLACEHOLDER-anthropic-00000000",
                "gemini": "AIza-PLACEHOLDER-gemini-000000000000"}
GEMINI = "https://generativelanguage.googleapis.com"


_VENDORS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
            "gemini": "generativelanguage.googleapis.com"}


def llm_policy(*, head: str = "", openai: str = "", anthropic: str = "", gemini: str = "") -> str:
    """The policy template every LLM module starts from: the three vault secrets, each bound to its
    vendor's host, all given to agent ``bot``, loopback allowed. ``openai``, ``anthropic`` and
    ``gemini`` are a module's own lines for that secret and ``head`` its top-level lines before
    ``secrets:`` (prices), written unindented; braces doubled, as for ``start_llm_stack``."""
    parts = ["version: 1\n", textwrap.dedent(head), "secrets:\n"]
    for name, extra in (("openai", openai), ("anthropic", anthropic), ("gemini", gemini)):
        parts.append(f"  {name}:\n    from: vault\n    placeholder: \"{{{name}}}\"\n"
                     f"    destinations: [{{{{host: {_VENDORS[name]}}}}}]\n")
        parts.append(textwrap.indent(textwrap.dedent(extra), "    "))
    parts.append("agents:\n  bot:\n    secrets: [openai, anthropic, gemini]\n"
                 "network:\n  allow_addresses: [127.0.0.0/8]\n")
    return "".join(parts)


@dataclass
class LlmStack:
    root: Path
    home: Home
    policy_file: Path
    proxy: ProxyProcess
    upstream: EchoServer
    values: dict[str, str]

    def issue(self, *names: str, **options: object) -> IssuedGrant:
        store = SqliteGrantStore(self.home.grants_db)
        try:
            return issue_grant(load_policy(self.policy_file), store, agent="bot", task="llm e2e",
                               secrets=list(names or PLACEHOLDERS), ttl=None, max_uses=None,
                               now=utc_now(), proxy_url_base=self.proxy.info["listen"],
                               **options)  # type: ignore[arg-type]
        finally:
            store.close()

    def http(self, token: str) -> httpx.Client:
        context = ssl.create_default_context(cafile=str(self.proxy.ca_path))
        return httpx.Client(proxy=self.proxy.proxy_url(token, "bot"), verify=context,
                            timeout=20)

    def openai(self, token: str) -> openai.OpenAI:
        import openai
        return openai.OpenAI(api_key=PLACEHOLDERS["openai"], base_url="https://api.openai.com/v1",
                             http_client=self.http(token), max_retries=0)

    def anthropic(self, token: str) -> anthropic.Anthropic:
        # This SDK brings its own httpx fork (httpx2); its default client takes the same options.
        import anthropic
        context = ssl.create_default_context(cafile=str(self.proxy.ca_path))
        client = anthropic.DefaultHttpxClient(proxy=self.proxy.proxy_url(token, "bot"),
                                              verify=context, timeout=20)
        return anthropic.Anthropic(api_key=PLACEHOLDERS["anthropic"],
                                   base_url="https://api.anthropic.com",
                                   http_client=client, max_retries=0)

    def assert_no_secret_written(self) -> None:
        """No real secret value in the audit log or the proxy's log."""
        written = self.home.audit_log.read_text() + (self.root / "proxy.log").read_text()
        assert not any(value in written for value in self.values.values())

    def carried(self, name: str) -> int:
        """How many requests reached the upstream with the real value of secret ``name``."""
        return sum(1 for r in self.upstream.requests if r.contains(self.values[name]))


def start_llm_stack(root: Path, policy: str, upstream: EchoServer, pki: LocalPki) -> LlmStack:
    """``policy`` names the placeholders with {openai}, {anthropic}, {gemini}."""
    root.mkdir(parents=True, exist_ok=True)
    home = Home(root / "home").ensure()
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key())
    values = {name: f"real-{name}-" + secrets.token_urlsafe(24) for name in PLACEHOLDERS}
    with master_key_in_environment(env["BROKER_PROXY_MASTER_KEY"]):
        vault = Vault(home.vault, load_or_create_master_key(home, create=True))
        for name, value in values.items():
            vault.set(name, value)
    policy_file = root / "policy.yaml"
    policy_file.write_text(policy.format(**PLACEHOLDERS))
    pins = [f"--resolve={host}:443=127.0.0.1:{upstream.port}" for host in LLM_HOSTS]
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path, env=env,
                         extra_args=pins, log_path=root / "proxy.log").start()
    return LlmStack(root, home, policy_file, proxy, upstream, values)


@contextlib.contextmanager
def running_llm_stack(factory: pytest.TempPathFactory, name: str,
                      policy: str) -> Iterator[LlmStack]:
    """A module's LLM stack: its own PKI, the LLM stand-in upstream and a proxy on ``policy``;
    stopped on the way out, whatever the tests did."""
    pki = write_pki(factory.mktemp(f"{name}-pki"), list(LLM_HOSTS))
    upstream = EchoServer(pki.cert_path, pki.key_path, reply=llm_reply).start()
    try:
        stack = start_llm_stack(factory.mktemp(name), policy, upstream, pki)
        try:
            yield stack
        finally:
            stack.proxy.stop()
    finally:
        upstream.stop()


def llm_stack_fixture(name: str, policy: str, *, check_leaks: bool = False) -> Any:
    """A module-scoped ``llm`` fixture on ``running_llm_stack``; with ``check_leaks`` it asserts,
    once the stack is stopped, that no real secret value was written to its logs. A module takes
    it as ``llm = llm_stack_fixture(...)`` (pytest names a fixture by its attribute)."""
    @pytest.fixture(scope="module", name="llm")
    def llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlmStack]:
        with running_llm_stack(tmp_path_factory, name, policy) as stack:
            yield stack
        if check_leaks:
            stack.assert_no_secret_written()
    return llm
