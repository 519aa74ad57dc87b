"""End to end: an upstream reflects the injected secret in every form; the agent never sees it.

The real proxy process, real clients (httpx over HTTP/1.1 and HTTP/2, websockets), a local
HTTPS upstream that echoes the value it received raw, base64 (three offsets, URL-safe, wrapped),
hex, percent, JSON escapes and UTF-16, plain and compressed, whole and one byte per chunk.
"""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import API_HOST, Stack, Upstreams, curl_path, start_stack
from tests.reflect_upstream import FORMS, ReflectServer, WebSocketReflector

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"
ENCODINGS = ["", "gzip", "deflate", "br", "zstd", "gzip,br"]


@pytest.fixture(scope="module")
def scrub_stack(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
                ) -> Iterator[Stack]:
    reflect = ReflectServer(pki.cert_path, pki.key_path).start()
    websocket = WebSocketReflector(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=reflect, other=upstreams.other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=websocket,  # type: ignore[arg-type]
                      untrusted=upstreams.untrusted)
    running = start_stack(tmp_path_factory.mktemp("scrub-stack"), pki, mixed)
    yield running
    running.proxy.stop()
    reflect.stop()
    websocket.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written, "a secret value reached the proxy's log or audit log"


def client(stack: Stack, token: str, *, http2: bool = False) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(stack.proxy.ca_path))
    return httpx.Client(proxy=stack.proxy.proxy_url(token, "bot"), verify=context,
                        http2=http2, timeout=30)


@dataclass
class Fetched:
    status: int
    http_version: str
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str:
        return next(v for k, v in self.headers if k.lower() == name)


def fetch(stack: Stack, token: str, url: str, *, http2: bool) -> Fetched:
    """GET with the placeholder in X-Reflect; HTTP/2 through curl.

    httpx offers "http/1.1" before "h2" in ALPN and mitmproxy follows the client's order, so
    httpx never speaks HTTP/2 to the proxy; curl --http2 does.
    """
    if not http2:
        with client(stack, token) as agent:
            response = agent.get(url, headers={"X-Reflect": PLACEHOLDER})
        return Fetched(response.status_code, response.http_version, response.reason_phrase,
                       list(response.headers.multi_items()), response.content)
    done = subprocess.run(
        [curl_path(), "-sS", "--http2", "--max-time", "60", "-x",
         stack.proxy.proxy_url(token, "bot"), "--cacert", str(stack.proxy.ca_path),
         "-H", f"X-Reflect: {PLACEHOLDER}", "-D", "-", url],
        capture_output=True, timeout=90, check=True)
    blocks = done.stdout.split(b"\r\n\r\n")
    head = next(b for b in blocks if b.startswith(b"HTTP/2"))
    body = done.stdout.split(head + b"\r\n\r\n", 1)[1]
    status_line, *lines = head.decode().split("\r\n")
    headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines]
    return Fetched(int(status_line.split()[1]), "HTTP/2", "", headers, body)  # type: ignore[arg-type]


def reflect_url(stack: Stack, path: str) -> str:
    return f"https://{API_HOST}:{stack.upstreams.api.port}{path}"


def every_form(value: str) -> dict[str, bytes]:
    raw = value.encode()
    forms = {name: encode(raw) for name, encode in FORMS.items()}
    forms["raw_text"] = raw
    return forms


def assert_no_form_of(value: str, data: bytes) -> None:
    for name, form in every_form(value).items():
        # The stable middle of each form: edges of base64 at an offset mix in other bytes.
        middle = form.replace(b"\r", b"").replace(b"\n", b"")[8:-8]
        compact = data.replace(b"\r", b"").replace(b"\n", b"")
        assert middle not in compact, f"the {name} form of the secret reached the client"


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "http2"])
@pytest.mark.parametrize("drip", [False, True], ids=["whole", "dripped"])
@pytest.mark.parametrize("encoding", ENCODINGS, ids=[e or "identity" for e in ENCODINGS])
def test_reflected_secret_never_reaches_the_agent_in_any_form(
        scrub_stack: Stack, encoding: str, drip: bool, http2: bool) -> None:
    grant = scrub_stack.issue("api_key")
    url = reflect_url(scrub_stack, f"/v1/reflect?form=all&enc={encoding}&drip={int(drip)}")
    response = fetch(scrub_stack, grant.token, url, http2=http2)
    assert response.status == 200
    assert response.http_version == ("HTTP/2" if http2 else "HTTP/1.1")
    body = response.body
    assert_no_form_of(scrub_stack.api_key, body)
    head = "\n".join(f"{k}: {v}" for k, v in response.headers) + "\n" + response.reason
    assert_no_form_of(scrub_stack.api_key, head.encode())
    # Sent decoded: the proxy undid the compression to scrub.
    assert not any(k.lower() == "content-encoding" for k, _ in response.headers)
    # The agent reads back what it sent, in the encoding the upstream used.
    assert b"<raw:" + PLACEHOLDER.encode() + b">" in body
    assert b"<b64:" + base64.b64encode(PLACEHOLDER.encode()) + b">" in body
    assert b"<hex:" + PLACEHOLDER.encode().hex().encode() + b">" in body
    assert b"<utf16le:" + PLACEHOLDER.encode("utf-16-le") + b">" in body
    basic = body.split(b"<b64_basic:")[1].split(b">")[0]
    assert base64.b64decode(basic) == b"user:" + PLACEHOLDER.encode()
    assert response.header("set-cookie").startswith("sid=" + PLACEHOLDER)
    assert PLACEHOLDER in response.header("www-authenticate")
    # The value needed no percent-encoding, so the raw placeholder stands in for it.
    assert response.header("location").endswith("?token=" + PLACEHOLDER)
    if not http2:  # HTTP/2 has no reason phrase
        assert response.reason == "OK " + PLACEHOLDER


def test_redactions_are_audited_by_count_without_the_value(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    with client(scrub_stack, grant.token) as agent:
        agent.get(reflect_url(scrub_stack, "/v1/reflect"), params={"form": "raw,b64,hex"},
                  headers={"X-Reflect": PLACEHOLDER})
    records = [json.loads(line) for line in
               scrub_stack.home.audit_log.read_text().splitlines() if line.strip()]
    last = [r for r in records if r.get("event") == "response" and r.get("grant") ==
            grant.grant.id][-1]
    # 3 in the body; reason, Set-Cookie, Location and WWW-Authenticate in the head.
    assert last["redactions"] == 7
    assert last["secrets"] == ["api_key"]


def test_partial_content_on_a_secret_flow_is_withheld(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    with client(scrub_stack, grant.token) as agent:
        response = agent.get(reflect_url(scrub_stack, "/v1/range"),
                             headers={"X-Reflect": PLACEHOLDER, "Range": "bytes=0-"})
    assert response.status_code == 502
    assert response.json()["error"] == "response_withheld"
    assert scrub_stack.api_key.encode() not in response.content


def test_body_in_an_unknown_encoding_is_withheld(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    with client(scrub_stack, grant.token) as agent:
        response = agent.get(reflect_url(scrub_stack, "/v1/reflect"),
                             params={"form": "raw", "enc": "x-unknown"},
                             headers={"X-Reflect": PLACEHOLDER})
    assert response.status_code == 502
    assert response.json() == {"error": "response_withheld", "grant": grant.grant.id,
                               "message": response.json()["message"]}
    assert scrub_stack.api_key.encode() not in response.content


def test_compression_bomb_is_withheld_not_inflated(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    with client(scrub_stack, grant.token) as agent:
        response = agent.get(reflect_url(scrub_stack, "/v1/bomb"),
                             headers={"X-Reflect": PLACEHOLDER})
    assert response.status_code == 502
    assert response.json()["error"] == "response_withheld"


def test_long_download_without_a_secret_passes_the_buffer_limit(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")  # no placeholder sent: nothing to scrub
    with client(scrub_stack, grant.token) as agent:
        response = agent.get(reflect_url(scrub_stack, "/v1/big"),
                             params={"size": 24 << 20, "length": 1})
    assert response.status_code == 200
    assert len(response.content) == 24 << 20  # more than the proxy's 10 MB body_size_limit


def test_long_download_with_a_secret_is_scrubbed_as_it_streams(scrub_stack: Stack) -> None:
    grant = scrub_stack.issue("api_key")
    size = 24 << 20
    with client(scrub_stack, grant.token) as agent, agent.stream(
            "GET", reflect_url(scrub_stack, "/v1/big"), params={"size": size, "secret": 1,
                                                                 "length": 1},
            headers={"X-Reflect": PLACEHOLDER}) as response:
        assert response.status_code == 200
        count = 0
        tail = b""
        for chunk in response.iter_bytes():
            data = tail + chunk
            assert scrub_stack.api_key.encode() not in data
            count += data.count(PLACEHOLDER.encode())
            tail = data[-64:]
            count -= tail.count(PLACEHOLDER.encode())
        count += tail.count(PLACEHOLDER.encode())
    assert count == size // (64 * 1024)


def test_websocket_messages_are_scrubbed_across_message_boundaries(scrub_stack: Stack) -> None:
    from websockets.sync.client import connect

    grant = scrub_stack.issue("api_key")
    context = ssl.create_default_context(cafile=str(scrub_stack.proxy.ca_path))
    url = f"wss://{API_HOST}:{scrub_stack.upstreams.plain.port}/ws"
    with connect(url, proxy=scrub_stack.proxy.proxy_url(grant.token, "bot"), ssl=context,
                 additional_headers={"Authorization": f"Bearer {PLACEHOLDER}"},
                 open_timeout=15) as ws:
        messages = [ws.recv(timeout=10) for _ in range(5)]
    as_bytes = [m.encode() if isinstance(m, str) else m for m in messages]
    value = scrub_stack.api_key
    for message in as_bytes:
        assert_no_form_of(value, message)
        assert value[:8].encode() not in message and value[-8:].encode() not in message
    assert as_bytes[0] == b"whole:" + PLACEHOLDER.encode()
    assert b"".join(as_bytes[1:3]) == b"split:" + PLACEHOLDER.encode() + b":end"
    assert as_bytes[3] == b"bin:" + PLACEHOLDER.encode()
    assert base64.b64decode(as_bytes[4][4:]) == PLACEHOLDER.encode()
