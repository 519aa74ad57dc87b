"""The mitmproxy patches of the response path: what each does alone, and that each refuses to
start on a mitmproxy without what it patches (the end-to-end proof is in
``tests/security/test_e2e_response_path.py``)."""

from __future__ import annotations

import json

import pytest
import wsproto.events
from broker_proxy.addons import (
    header_folding,
    informational_responses,
    upstream_error_pages,
    websocket_controls,
)
from broker_proxy.addons.mitmproxy_compat import IncompatibleMitmproxy
from h11._receivebuffer import ReceiveBuffer
from mitmproxy.net.http.http1 import read as http1_read
from mitmproxy.proxy.layers import websocket
from mitmproxy.proxy.layers.http import _http1, _http2
from mitmproxy.proxy.layers.http._events import ErrorCode


def test_informational_heads_are_dropped_and_the_final_head_stays_whole() -> None:
    buf = ReceiveBuffer()
    buf += (b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 401 No\r\nContent-Length: 2\r\n\r\nab")
    informational_responses.drop_informational_heads(buf)
    assert bytes(buf) == b"HTTP/1.1 401 No\r\nContent-Length: 2\r\n\r\nab"
    partial = ReceiveBuffer()
    partial += b"HTTP/1.1 103 Early Hints\r\nLink"
    informational_responses.drop_informational_heads(partial)
    assert bytes(partial) == b"HTTP/1.1 103 Early Hints\r\nLink"  # waits for the rest
    switching = ReceiveBuffer()
    switching += b"HTTP/1.1 101 Switching Protocols\r\n\r\n"
    informational_responses.drop_informational_heads(switching)
    assert bytes(switching) == b"HTTP/1.1 101 Switching Protocols\r\n\r\n"


def test_error_pages_are_fixed_json_whatever_the_failure_said() -> None:
    for code in ErrorCode:
        page = upstream_error_pages.error_page(code)
        if code.http_status_code() is None:
            assert page is None
            continue
        assert page is not None
        status, body, headers = page
        assert status == code.http_status_code()
        assert headers["Content-Type"] == "application/json"
        assert set(json.loads(body)) == {"error", "grant", "message"}
    page = upstream_error_pages.error_page(ErrorCode.GENERIC_SERVER_ERROR)
    assert page is not None and page[0] == 502
    assert json.loads(page[1])["error"] == "upstream_error"


def test_control_frames_are_scrubbed_cut_to_fit_and_emptied_if_scrubbing_fails() -> None:
    def scrub(data: bytes) -> bytes:
        return data.replace(b"SECRET", b"{{secret:k}}" * 20)

    ping = websocket_controls.scrub_control(wsproto.events.Ping(b"x SECRET"), scrub)
    assert isinstance(ping, wsproto.events.Ping) and len(ping.payload) == 125
    assert b"SECRET" not in ping.payload
    close = websocket_controls.scrub_control(
        wsproto.events.CloseConnection(code=4000, reason="bad SECRET"), scrub)
    assert isinstance(close, wsproto.events.CloseConnection)
    assert close.code == 4000 and len(close.reason.encode()) <= 123
    assert "SECRET" not in close.reason

    def broken(data: bytes) -> bytes:
        raise RuntimeError("scrubber failed")

    assert websocket_controls.scrub_control(wsproto.events.Pong(b"SECRET"), broken).payload == b""


@pytest.mark.parametrize(("module", "owner", "attribute"), [
    (upstream_error_pages, _http1.Http1Server, "send"),
    (upstream_error_pages, _http2.Http2Server, "_handle_event"),
    (informational_responses, _http1.Http1Client, "read_headers"),
    (websocket_controls, websocket.WebsocketLayer, "start"),
    (header_folding, http1_read, "_read_headers"),
])
def test_each_patch_refuses_to_start_without_what_it_patches(
        monkeypatch: pytest.MonkeyPatch, module: object, owner: type, attribute: str) -> None:
    monkeypatch.setattr(owner, attribute, None)
    with pytest.raises(IncompatibleMitmproxy):
        module.install()  # type: ignore[attr-defined]


def test_a_folded_header_line_is_refused_in_requests_and_answers() -> None:
    from mitmproxy.net.http.http1 import read_request_head, read_response_head

    header_folding.install()
    with pytest.raises(ValueError, match="obsolete line folding") as refused:
        read_response_head([b"HTTP/1.1 200 OK\r\n", b"X-Echo: sk-SECRET\r\n", b" -REST\r\n"])
    assert b"SECRET" not in str(refused.value).encode()  # the message quotes nothing
    with pytest.raises(ValueError, match="obsolete line folding"):
        read_request_head([b"GET / HTTP/1.1\r\n", b"Host: a\r\n", b"X-A: b\r\n", b"\tc\r\n"])
    unfolded = read_response_head([b"HTTP/1.1 200 OK\r\n", b"X-Echo: a b\r\n"])
    assert unfolded.headers["x-echo"] == "a b"
