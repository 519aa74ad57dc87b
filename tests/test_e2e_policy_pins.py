"""`network.resolve` pins in the policy: where a host's traffic goes, changed by a reload."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker_proxy.devtools.local_pki import LocalPki
from tests.conftest import (
    API_HOST,
    EGRESS_HOST,
    EVIL_HOST,
    OTHER_HOST,
    Stack,
    Upstreams,
    start_stack,
)
from tests.e2e_clients import CLIENTS
from tests.test_policy_reload import reload_count, wait_for_reloads, write_policy

pytestmark = pytest.mark.e2e

API_AUTH = {"Authorization": "Bearer {{secret:api_key}}"}
PINNED_POLICY = """\
version: 1
secrets:
  api_key:
    from: vault
    destinations:
      - host: {other}
agents:
  bot:
    secrets: [api_key]
    max_ttl: 1h
network:
  allow_addresses: [127.0.0.0/8]
  resolve: ["{other}:443=127.0.0.1:{other_port}"]
"""


@pytest.fixture(scope="module")
def pinned_stack(tmp_path_factory: pytest.TempPathFactory, pki: LocalPki,
                 upstreams: Upstreams) -> Iterator[Stack]:
    # OTHER_HOST gets no --resolve pin on the command line: only the policy says where it is.
    running = start_stack(tmp_path_factory.mktemp("pins"), pki, upstreams, policy=PINNED_POLICY,
                          resolve_hosts=(API_HOST, EVIL_HOST, EGRESS_HOST))
    yield running
    running.proxy.stop()


def test_a_policy_pin_sends_the_host_to_its_address_and_a_reload_moves_it(
        pinned_stack: Stack) -> None:
    ups = pinned_stack.upstreams
    grant = pinned_stack.issue("api_key")
    url = f"https://{OTHER_HOST}/v1/pinned"
    first = CLIENTS["curl"](pinned_stack, grant.token, "GET", url, headers=API_AUTH)
    assert first.status == 200
    [received] = [r for r in ups.other.requests if r.path == "/v1/pinned"]
    assert received.header("Authorization") == f"Bearer {pinned_stack.api_key}"

    oks = reload_count(pinned_stack, "ok")
    moved = pinned_stack.policy_file.read_text().replace(
        f"127.0.0.1:{ups.other.port}", f"127.0.0.1:{ups.evil.port}")
    write_policy(pinned_stack, moved)
    wait_for_reloads(pinned_stack, "ok", at_least=1, since=oks)
    second = CLIENTS["curl"](pinned_stack, grant.token, "GET", url.replace("pinned", "moved"),
                             headers=API_AUTH)
    assert second.status == 200
    [moved_request] = [r for r in ups.evil.requests if r.path == "/v1/moved"]
    assert moved_request.header("Authorization") == f"Bearer {pinned_stack.api_key}"
    assert not [r for r in ups.other.requests if r.path == "/v1/moved"]
