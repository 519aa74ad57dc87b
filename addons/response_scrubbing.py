"""The mitmproxy half of scrubbing answers to requests that carried a secret.

Order matters with mitmproxy: a streamed response's status line and headers leave for the client
right after ``responseheaders``, so they are scrubbed there; the body passes through a callable
``flow.response.stream`` chunk by chunk; trailers leave after ``response``, so they are scrubbed
there. Choices, each for a reason:

* A body of unknown or large length is scrubbed as a stream (bounded memory, no waiting for the
  end of a download or of server-sent events). Its length changes, so Content-Length goes and
  HTTP/1 uses chunked. A body whose Content-Length is at most 1 MiB is scrubbed whole in
  ``response`` and keeps an exact Content-Length.
* An encoded body is sent decoded (Content-Encoding and digest headers removed): re-encoding
  would cost CPU for no safety. When its encoded length is known and small it is buffered and
  decoded in ``response``, so a body that cannot be decoded within bounds is replaced by a 502
  ``response_withheld``. Otherwise it is decoded as it streams; past the bounds the rest is
  dropped and the response aborted (the headers are gone already): the client sees a broken
  response, never unscrubbed bytes.
* A 206 (or any Content-Range) answer is withheld with a 502: ranges could fetch a secret
  piecewise, each piece too short to be recognised. (The request side could also drop Range.)
* WebSocket messages from the server are scrubbed across message boundaries (see
  ``MessageScrubber``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mitmproxy import http

from broker_proxy import outbound as codes
from broker_proxy.content_decoding import (
    BodyNotDecodable,
    DecodeLimits,
    StreamDecoder,
    decode_whole,
    parse_content_encoding,
)
from broker_proxy.outbound import Allowed, Denied
from broker_proxy.scrubber import MessageScrubber, Scrubber, StreamScrubber, scrubber_for

log = logging.getLogger("broker_proxy.addon")

STATE_KEY = "broker_proxy.scrub"
# An encoded body up to this size is buffered, so that failing to decode it can be a clean 502.
BUFFER_ENCODED_UP_TO = 8 * 1024 * 1024
# A short plain body is buffered too: it keeps its Content-Length, and mitmproxy's streaming
# path (chunked framing, a call per chunk) costs more CPU than scrubbing it whole.
BUFFER_PLAIN_UP_TO = 1024 * 1024
BUFFERED_LIMITS = DecodeLimits(max_output=64 * 1024 * 1024)
STREAMED_LIMITS = DecodeLimits()
# Digests of the encoded or unscrubbed body would no longer match what the client gets.
_DIGEST_HEADERS = ("content-md5", "digest", "content-digest", "repr-digest")


def _add(counts: dict[str, int], found: dict[str, int]) -> None:
    for name, count in found.items():
        counts[name] = counts.get(name, 0) + count


class _BodyStream:
    """``flow.response.stream``: bytes in, scrubbed bytes out; called with b"" at the end."""

    def __init__(self, flow: http.HTTPFlow, scrubber: Scrubber,
                 decoder: StreamDecoder | None) -> None:
        self._flow = flow
        self._decoder = decoder
        self.scrubbing: StreamScrubber = scrubber.stream()
        self.failed = False

    def __call__(self, data: bytes) -> list[bytes]:
        # A list, never b"": mitmproxy frames an empty bytes chunk as HTTP/1's last chunk.
        if self.failed:
            return []
        try:
            if data:
                plain = self._decoder.feed(data) if self._decoder else data
                out = self.scrubbing.feed(plain)
            else:
                plain = self._decoder.finish() if self._decoder else b""
                out = self.scrubbing.feed(plain) + self.scrubbing.finish()
            return [out] if out else []
        except Exception as error:  # never pass on what could not be scrubbed
            log.warning("response body cut: %s", error if isinstance(error, BodyNotDecodable)
                        else type(error).__name__)
            self.failed = True
            if self._flow.killable:
                self._flow.kill()  # aborts the response once the upstream is done
            return []


@dataclass
class ScrubState:
    scrubber: Scrubber
    counts: dict[str, int] = field(default_factory=dict)
    body: _BodyStream | None = None
    buffered_codings: list[str] | None = None
    withheld: bytes | None = None  # the 502 body that replaced the answer
    messages: MessageScrubber | None = None


def _withhold(flow: http.HTTPFlow, state: ScrubState, verdict: Allowed, message: str) -> None:
    denied = Denied(502, codes.RESPONSE_WITHHELD, message, verdict.grant_id)
    state.withheld = denied.body()
    flow.response = http.Response.make(502, state.withheld, denied.headers())
    # Streamed, mitmproxy sends only what the callable returns: the 502 body, at the end.
    withheld = state.withheld
    flow.response.stream = lambda data: [] if data else [withheld]


def _scrub_head(response: http.Response, state: ScrubState) -> None:
    """Status reason and every header (Set-Cookie, Location, WWW-Authenticate, ...)."""
    reason, found = state.scrubber.scrub(response.data.reason)
    response.data.reason = reason
    _add(state.counts, found)
    fields = []
    for name, value in response.headers.fields:
        name, found_name = state.scrubber.scrub(name)
        value, found_value = state.scrubber.scrub(value)
        _add(state.counts, found_name)
        _add(state.counts, found_value)
        fields.append((name, value))
    response.headers = http.Headers(fields)


def _has_body(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    status = flow.response.status_code
    return not (flow.request.method.upper() == "HEAD" or status < 200 or status in (204, 304))


def on_response_headers(flow: http.HTTPFlow, verdict: Allowed) -> None:
    """``responseheaders`` for a flow that carried a secret: scrub the head, plan the body."""
    response = flow.response
    assert response is not None
    state = ScrubState(scrubber_for(verdict.scrub))
    flow.metadata[STATE_KEY] = state
    if response.status_code == 206 or "content-range" in response.headers:
        _withhold(flow, state, verdict, "partial content is not passed on for a request "
                  "that carried a secret")
        return
    _scrub_head(response, state)
    if not _has_body(flow):
        return
    try:
        codings = parse_content_encoding(response.headers.get("content-encoding"))
    except BodyNotDecodable as error:
        _withhold(flow, state, verdict, f"the answer could not be scrubbed: {error}")
        return
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) <= (BUFFER_ENCODED_UP_TO if codings
                                            else BUFFER_PLAIN_UP_TO):
        # Scrubbed whole in ``response`` (an encoded body decoded first, 502 if that fails).
        state.buffered_codings = codings
        return
    decoder = StreamDecoder(codings, STREAMED_LIMITS) if codings else None
    for name in ("content-encoding", "content-length", *_DIGEST_HEADERS):
        response.headers.pop(name, None)
    if not (response.is_http2 or response.is_http3):
        response.headers["transfer-encoding"] = "chunked"
    state.body = _BodyStream(flow, state.scrubber, decoder)
    response.stream = state.body


def on_response(flow: http.HTTPFlow, verdict: Allowed) -> dict[str, int]:
    """``response`` for a flow that carried a secret; returns the redactions by secret."""
    response = flow.response
    assert response is not None
    state = flow.metadata.get(STATE_KEY)
    if state is None:  # ``responseheaders`` did not run (an embedding without it): buffered
        state = ScrubState(scrubber_for(verdict.scrub))
        _scrub_head(response, state)
        try:
            state.buffered_codings = parse_content_encoding(
                response.headers.get("content-encoding"))
        except BodyNotDecodable as error:
            _withhold(flow, state, verdict, f"the answer could not be scrubbed: {error}")
            flow.response.stream = False
    if state.withheld is not None:
        if not response.stream:
            response.content = state.withheld
        return state.counts
    if state.body is not None:
        _add(state.counts, state.body.scrubbing.counts)
    elif response.raw_content:
        _scrub_buffered_body(flow, state, verdict)
    if response.trailers:
        fields = []
        for name, value in response.trailers.fields:
            value, found = state.scrubber.scrub(value)
            _add(state.counts, found)
            fields.append((name, value))
        response.trailers = http.Headers(fields)
    return state.counts


def _scrub_buffered_body(flow: http.HTTPFlow, state: ScrubState, verdict: Allowed) -> None:
    response = flow.response
    assert response is not None and response.raw_content is not None
    try:
        body = response.raw_content
        if state.buffered_codings:
            body = decode_whole(body, state.buffered_codings, BUFFERED_LIMITS)
    except BodyNotDecodable as error:
        denied = Denied(502, codes.RESPONSE_WITHHELD,
                        f"the answer could not be scrubbed: {error}", verdict.grant_id)
        flow.response = http.Response.make(502, denied.body(), denied.headers())
        return
    scrubbed, found = state.scrubber.scrub(body)
    if not found and not state.buffered_codings:
        return  # nothing to take out of a plain body: it goes on as it came (digests hold)
    _add(state.counts, found)
    for name in ("content-encoding", *_DIGEST_HEADERS):
        response.headers.pop(name, None)
    response.set_content(scrubbed)  # also sets Content-Length


def on_websocket_message(flow: http.HTTPFlow, verdict: Allowed) -> dict[str, int]:
    """Scrub the newest server message; returns the redactions it made."""
    assert flow.websocket is not None
    message = flow.websocket.messages[-1]
    if message.from_client:
        return {}
    state = flow.metadata.get(STATE_KEY)
    if state is None:
        state = ScrubState(scrubber_for(verdict.scrub))
        flow.metadata[STATE_KEY] = state
    if state.messages is None:
        state.messages = MessageScrubber(state.scrubber)
    before = dict(state.messages.counts)
    message.content = state.messages.message(message.content)
    return {name: count - before.get(name, 0) for name, count in state.messages.counts.items()
            if count != before.get(name, 0)}


def was_withheld(flow: http.HTTPFlow) -> bool:
    """Did the scrubber replace this flow's answer with a 502 (for the audit record)?"""
    state = flow.metadata.get(STATE_KEY)
    return state is not None and state.withheld is not None
