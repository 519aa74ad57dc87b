"""End to end: a destination's ``withhold`` list, through the real proxy.

A 7z archive or a PDF (its stream deflated) is a form the scrubber cannot look inside: the value
the upstream stored comes back compressed inside a container. The policy withholds those media
types at the API host (``withhold`` under api_key's destination). ``ReflectServer`` answers with
the injected value wrapped in the container asked for (``?nest=7z|pdf``) under the label asked for
(``?type=``), and says, as a digest, what it received: each test shows what the agent got and,
as a control, that the legitimate request still carried the real value upstream.

Controls: the same media types from a host without ``withhold`` (other.test.local, where
other_key goes) pass; another media type from the withholding host passes (scrubbed as usual).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import lzma
import time
import zlib
from collections.abc import Iterator

import httpx
import pytest

from broker_proxy.audit.log import AuditLog
from tests.conftest import API_HOST, E2E_POLICY, OTHER_HOST, Stack, Upstreams, start_stack
from tests.e2e_clients import via_curl, via_httpx, via_requests
from tests.reflect_upstream import ReflectServer
from tests.test_cli import run_cli
from tests.test_e2e_scrubbing import client

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"
OTHER_PLACEHOLDER = "other-PLACEHOLDER-0000"
SEVEN_ZIP = "application/x-7z-compressed"
WITHHOLD_POLICY = E2E_POLICY.replace(
    '        paths: ["/v1/**"]\n',
    '        paths: ["/v1/**"]\n'
    '        withhold: [application/x-7z-compressed, "application/pdf", "application/*rar*"]\n',
    1)
assert WITHHOLD_POLICY != E2E_POLICY


@pytest.fixture(scope="module")
def withhold_stack(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
                   ) -> Iterator[Stack]:
    api = ReflectServer(pki.cert_path, pki.key_path).start()
    other = ReflectServer(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=api, other=other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=upstreams.plain,
                      untrusted=upstreams.untrusted)
    running = start_stack(tmp_path_factory.mktemp("withhold-stack"), pki, mixed,
                          policy=WITHHOLD_POLICY)
    yield running
    running.proxy.stop()
    api.stop()
    other.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    for value in running.secret_values():
        assert value not in written, "a secret value reached the proxy's log or audit log"
    done = run_cli(running.home.root, "audit", "verify", env=running.env)
    assert done.returncode == 0, done.stderr


def _get(stack: Stack, token: str, host: str, port: int, placeholder: str,
         params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """What the agent got: status, headers, every body byte that arrived (a cut answer too)."""
    received = b""
    with client(stack, token) as agent, agent.stream(
            "GET", f"https://{host}:{port}/v1/reflect", params=params,
            headers={"X-Reflect": placeholder}) as answer:
        try:
            for chunk in answer.iter_raw():
                received += chunk
        except httpx.HTTPError:
            pass  # the proxy cut the answer
        return answer.status_code, dict(answer.headers), received


def _assert_received(upstream: object, value: str) -> None:
    """The control: the upstream received the real value."""
    assert isinstance(upstream, ReflectServer)
    assert upstream.digests[-1] == hashlib.sha256(value.encode()).hexdigest()


def _assert_nothing_of(value: str, data: bytes) -> None:
    """No part of the value, also once the containers are opened as far as they go."""
    seen = [data]
    archive, stream = data.find(b"7z\xbc\xaf\x27\x1c"), data.find(b"stream\n")
    with contextlib.suppress(lzma.LZMAError, EOFError):
        if archive >= 0:  # the 7z signature header is 32 bytes
            seen.append(lzma.LZMADecompressor().decompress(data[archive + 32:]))
    with contextlib.suppress(zlib.error):
        if stream >= 0:  # a PDF stream under FlateDecode
            seen.append(zlib.decompressobj().decompress(data[stream + len(b"stream\n"):]))
    for text in seen:
        assert value[:8].encode() not in text and value[-8:].encode() not in text


def _response_record(stack: Stack, grant_id: str) -> dict:
    """The grant's last ``response`` record (written once the answer has left: waited for)."""
    deadline = time.monotonic() + 10
    while True:
        found = [r for r in AuditLog.read_records(stack.home.audit_log)
                 if r["event"] == "response" and r["grant"] == grant_id]
        if found or time.monotonic() > deadline:
            assert found, "no response record"
            return found[-1]
        time.sleep(0.05)


@pytest.mark.parametrize(("nest", "label"), [("7z", SEVEN_ZIP), ("pdf", "application/pdf"),
                                              ("7z", "Application/X-7z-Compressed; v=1")],
                         ids=["7z", "pdf", "7z-label-case-and-parameters"])
def test_a_listed_media_type_from_the_withholding_host_is_withheld(
        withhold_stack: Stack, nest: str, label: str) -> None:
    grant = withhold_stack.issue("api_key")
    status, headers, body = _get(withhold_stack, grant.token, API_HOST,
                                 withhold_stack.upstreams.api.port, PLACEHOLDER,
                                 {"form": "raw", "nest": nest, "type": label})
    _assert_received(withhold_stack.upstreams.api, withhold_stack.api_key)
    assert status == 502
    answer = json.loads(body)
    assert answer["error"] == "response_withheld" and answer["grant"] == grant.grant.id
    assert "withheld by the policy" in answer["message"]
    assert headers["content-type"] == "application/json"
    _assert_nothing_of(withhold_stack.api_key, body + json.dumps(headers).encode())
    record = _response_record(withhold_stack, grant.grant.id)
    assert (record["status"], record.get("withheld"), record["secrets"]) == (
        502, True, ["api_key"])


@pytest.mark.parametrize("fetch", [via_curl, via_requests, via_httpx],
                         ids=["curl", "requests", "httpx"])
def test_every_client_gets_the_same_withheld_answer(withhold_stack: Stack, fetch) -> None:
    grant = withhold_stack.issue("api_key")
    url = (f"https://{API_HOST}:{withhold_stack.upstreams.api.port}/v1/reflect"
           "?form=raw&nest=pdf&type=application/pdf")
    got = fetch(withhold_stack, grant.token, "GET", url, {"X-Reflect": PLACEHOLDER})
    _assert_received(withhold_stack.upstreams.api, withhold_stack.api_key)
    assert got.status == 502 and got.json()["error"] == "response_withheld"
    assert got.headers["content-length"] == str(len(got.body))
    _assert_nothing_of(withhold_stack.api_key, got.body)


@pytest.mark.parametrize("drip", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("label", ["application/octet-stream", "", "text/plain"],
                         ids=["octet-stream", "empty", "mislabelled"])
def test_a_7z_under_another_label_is_withheld_by_its_first_bytes(
        withhold_stack: Stack, label: str, drip: bool) -> None:
    grant = withhold_stack.issue("api_key")
    status, _, body = _get(withhold_stack, grant.token, API_HOST,
                           withhold_stack.upstreams.api.port, PLACEHOLDER,
                           {"form": "raw", "nest": "7z", "type": label, "drip": str(int(drip))})
    _assert_received(withhold_stack.upstreams.api, withhold_stack.api_key)
    _assert_nothing_of(withhold_stack.api_key, body)
    if drip:
        assert body == b""  # cut before any byte of the archive left the proxy
    else:
        assert status == 502 and json.loads(body)["error"] == "response_withheld"
        assert _response_record(withhold_stack, grant.grant.id).get("withheld") is True


def test_another_media_type_from_the_withholding_host_passes_scrubbed(
        withhold_stack: Stack) -> None:
    grant = withhold_stack.issue("api_key")
    status, headers, body = _get(withhold_stack, grant.token, API_HOST,
                                 withhold_stack.upstreams.api.port, PLACEHOLDER,
                                 {"form": "raw", "type": "text/plain"})
    _assert_received(withhold_stack.upstreams.api, withhold_stack.api_key)
    assert status == 200 and headers["content-type"] == "text/plain"
    assert body == b"<raw:" + PLACEHOLDER.encode() + b">\n"
    # A zip is not listed: it is looked inside as usual, and passes when nothing is in it.
    status, _, body = _get(withhold_stack, grant.token, API_HOST,
                           withhold_stack.upstreams.api.port, PLACEHOLDER,
                           {"secret": "0", "nest": "gzip", "type": "application/gzip"})
    assert status == 200 and body[:3] == b"\x1f\x8b\x08"


@pytest.mark.parametrize(("nest", "label"), [("7z", SEVEN_ZIP), ("pdf", "application/pdf")])
def test_the_same_media_type_from_a_host_without_withhold_passes(
        withhold_stack: Stack, nest: str, label: str) -> None:
    grant = withhold_stack.issue("other_key")
    status, headers, body = _get(withhold_stack, grant.token, OTHER_HOST,
                                 withhold_stack.upstreams.other.port, OTHER_PLACEHOLDER,
                                 {"secret": "0", "nest": nest, "type": label})
    _assert_received(withhold_stack.upstreams.other, withhold_stack.other_key)
    assert status == 200 and headers["content-type"] == label
    assert body.startswith(b"7z\xbc\xaf\x27\x1c" if nest == "7z" else b"%PDF-")
