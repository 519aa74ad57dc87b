"""End to end: the spellings pages, mail and dumps give a value, and folded headers.

The real proxy process, httpx, and local HTTPS upstreams: ``ReflectServer`` answers with the
injected value in the form asked for (HTML references, quoted-printable, lines, base32, hex with
separators, UTF-32) and says, as a digest, what it received; ``HostileUpstream`` writes a
folded header by hand. Each test shows the agent never reads the value back, and, as a control,
that the upstream did receive the real value: the proxy still injects.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import lzma
import quopri
import zipfile
import zlib
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import API_HOST, Stack, Upstreams, start_stack
from tests.reflect_upstream import FORMS, ReflectServer
from tests.security.raw_proxy import tunnel_exchange
from tests.security.test_e2e_response_path import (  # noqa: F401 - fixtures
    assert_error_body,
    assert_injected,
    hostile,
    hostile_stack,
    url,
)
from tests.test_e2e_scrubbing import assert_no_form_of, client

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]

pytestmark = pytest.mark.e2e

PLACEHOLDER = "{{secret:api_key}}"
NEW_FORMS = ["html_dec", "html_hex", "html_mixed", "qp_all", "qp_soft", "lines_lf",
             "lines_crlf", "b32", "hex_colon", "hex_space", "hex_dash", "utf32le", "utf32be"]


@pytest.fixture(scope="module")
def forms_stack(tmp_path_factory: pytest.TempPathFactory, pki, upstreams: Upstreams
                ) -> Iterator[Stack]:
    reflect = ReflectServer(pki.cert_path, pki.key_path).start()
    mixed = Upstreams(api=reflect, other=upstreams.other, evil=upstreams.evil,  # type: ignore[arg-type]
                      egress=upstreams.egress, plain=upstreams.plain,
                      untrusted=upstreams.untrusted)
    running = start_stack(tmp_path_factory.mktemp("forms-stack"), pki, mixed)
    yield running
    running.proxy.stop()
    reflect.stop()
    written = (running.root / "proxy.log").read_text(errors="replace")
    written += running.home.audit_log.read_text(errors="replace")
    assert running.api_key not in written, "a secret value reached the proxy's log or audit log"


def _decoded(form: str, data: bytes) -> bytes:
    """What the agent reads once it undoes the form (the placeholder, if all went well)."""
    if form.startswith("html"):
        return html.unescape(data.decode()).encode()
    if form.startswith("qp"):
        return quopri.decodestring(data)
    if form.startswith("lines"):
        return data.replace(b"\r", b"").replace(b"\n", b"")
    if form == "b32":
        return base64.b32decode(data)
    if form.startswith("hex"):
        return bytes.fromhex(data.decode().replace(":", "").replace("-", "").replace(" ", ""))
    return data.decode("utf-32-le" if form == "utf32le" else "utf-32-be").encode()


@pytest.mark.parametrize("encoding", ["", "gzip"], ids=["identity", "gzip"])
@pytest.mark.parametrize("form", NEW_FORMS)
def test_each_page_mail_and_dump_form_is_scrubbed(forms_stack: Stack, form: str,
                                                   encoding: str) -> None:
    grant = forms_stack.issue("api_key")
    with client(forms_stack, grant.token) as agent:
        answer = agent.get(f"https://{API_HOST}:{forms_stack.upstreams.api.port}/v1/reflect",
                           params={"form": form, "enc": encoding},
                           headers={"X-Reflect": PLACEHOLDER})
    value = forms_stack.api_key
    # The control: the upstream received the real value.
    assert answer.headers["x-received-digest"] == hashlib.sha256(value.encode()).hexdigest()
    assert answer.status_code == 200
    assert_no_form_of(value, answer.content)
    inner = answer.content.split(f"<{form}:".encode(), 1)[1].rsplit(b">", 1)[0]
    assert _decoded(form, inner) == PLACEHOLDER.encode()
    assert FORMS[form](value.encode()) not in answer.content


# obs-fold: RFC 9112 section 5.2 lets a proxy unfold or refuse; the proxy refuses.


def test_an_answer_with_a_folded_header_is_refused_not_forwarded(
        hostile_stack: Stack, hostile) -> None:  # noqa: F811 - the imported fixture
    grant = hostile_stack.issue("api_key")
    with client(hostile_stack, grant.token) as agent:
        answer = agent.get(url(hostile_stack, "/v1/folded"), headers={"X-Reflect": PLACEHOLDER})
    assert_injected(hostile_stack, hostile, "/v1/folded")
    assert answer.status_code == 502
    assert_error_body(answer.content, "upstream_error", hostile_stack)
    value = hostile_stack.api_key
    half = len(value) // 2
    seen = str(answer.headers).encode() + answer.content
    assert value[:half].encode() not in seen and value[half:].encode() not in seen
    assert "x-echo" not in answer.headers


def test_a_request_with_a_folded_header_is_refused_and_never_sent(
        hostile_stack: Stack, hostile) -> None:  # noqa: F811 - the imported fixture
    grant = hostile_stack.issue("api_key")
    port = hostile_stack.upstreams.api.port

    def request(path: str, reflect: str) -> bytes:
        return (f"GET {path} HTTP/1.1\r\nHost: {API_HOST}:{port}\r\n"
                f"X-Reflect: {reflect}\r\nConnection: close\r\n\r\n").encode()

    half = len(PLACEHOLDER) // 2
    folded = PLACEHOLDER[:half] + "\r\n " + PLACEHOLDER[half:]
    refused = tunnel_exchange(hostile_stack, grant.token, API_HOST, port,
                              request("/v1/plain?folded", folded))
    assert refused.status == 400
    assert not [r for r in hostile.received if "folded" in r.path]
    # The control: the same request unfolded goes out with the real value in it.
    sent = tunnel_exchange(hostile_stack, grant.token, API_HOST, port,
                           request("/v1/plain?control", PLACEHOLDER))
    assert sent.status == 200
    assert_injected(hostile_stack, hostile, "/v1/plain?control")


# A body that is itself compressed: searched inside, passed unchanged or withheld.

NESTED = {
    "application-gzip": {"nest": "gzip", "type": "application/gzip"},
    "gzip-twice": {"nest": "gzip", "enc": "gzip"},  # Content-Encoding: gzip over a gzip body
    "zstd-sniffed": {"nest": "zstd", "type": "application/octet-stream"},
    "zip": {"nest": "zip", "type": "application/zip"},
    "xz-sniffed": {"nest": "xz", "type": "application/octet-stream"},
}


@pytest.mark.parametrize("drip", [False, True], ids=["buffered", "streamed"])
@pytest.mark.parametrize("case", sorted(NESTED))
def test_a_secret_inside_a_compressed_body_is_withheld(forms_stack: Stack, case: str,
                                                       drip: bool) -> None:
    grant = forms_stack.issue("api_key")
    value = forms_stack.api_key.encode()
    params = {"form": "raw,b64", **NESTED[case], "drip": str(int(drip))}
    received = b""
    with client(forms_stack, grant.token) as agent, agent.stream(
            "GET", f"https://{API_HOST}:{forms_stack.upstreams.api.port}/v1/reflect",
            params=params, headers={"X-Reflect": PLACEHOLDER}) as answer:
        status = answer.status_code
        try:
            for chunk in answer.iter_raw():
                received += chunk
        except httpx.HTTPError:
            pass  # streamed: the proxy cut the answer
    # The control: the upstream received the real value.
    reflect = forms_stack.upstreams.api
    assert isinstance(reflect, ReflectServer)
    assert reflect.digests[-1] == hashlib.sha256(value).hexdigest()
    if not drip:
        assert status == 502
        assert json.loads(received)["error"] == "response_withheld"
    # Whatever arrived, undone as far as it goes, holds no part of the value.
    for decode in (lambda d: d, lambda d: zlib.decompressobj(31).decompress(d),
                   lambda d: zlib.decompressobj(31).decompress(
                       zlib.decompressobj(31).decompress(d)),
                   lambda d: zstd.ZstdDecompressor().decompress(d),
                   lambda d: zipfile.ZipFile(io.BytesIO(d)).read("reflected.txt"),
                   lambda d: lzma.LZMADecompressor().decompress(d)):
        try:
            seen = decode(received)
        except (zlib.error, zstd.ZstdError, zipfile.BadZipFile, KeyError, EOFError,
                lzma.LZMAError):
            continue
        assert value[:8] not in seen and value[-8:] not in seen


@pytest.mark.parametrize("drip", [False, True], ids=["buffered", "streamed"])
def test_a_compressed_body_without_a_secret_arrives_unchanged(forms_stack: Stack,
                                                              drip: bool) -> None:
    grant = forms_stack.issue("api_key")
    with client(forms_stack, grant.token) as agent:
        answer = agent.get(f"https://{API_HOST}:{forms_stack.upstreams.api.port}/v1/reflect",
                           params={"secret": "0", "nest": "gzip", "type": "application/gzip",
                                   "drip": str(int(drip))},
                           headers={"X-Reflect": PLACEHOLDER})
    assert answer.headers["x-received-digest"] == hashlib.sha256(
        forms_stack.api_key.encode()).hexdigest()
    assert answer.status_code == 200
    assert answer.content[:3] == b"\x1f\x8b\x08"  # still the archive the agent asked for
    assert zlib.decompress(answer.content, 31) == b"nothing to see here\n" * 20
