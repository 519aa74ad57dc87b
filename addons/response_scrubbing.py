"""The mitmproxy half of scrubbing every answer on a grant's connections.

Per grant, not per flow: every allowed request's verdict carries every secret its grant holds
(``Allowed.scrub``), so an answer is scrubbed whether or not its own request injected anything.
A grant whose values could not all be resolved (``Allowed.scrub_complete`` false) has its
answers withheld. An answer with nothing to scrub and no transfer coding to undo streams through
untouched.

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
* A transfer coding other than chunked (``Transfer-Encoding: gzip, chunked``) is undone like a
  content coding, within the same bounds, on every flow, also one with nothing to scrub: the
  agent's client never gets encoded bytes under a label that no longer says so. One that cannot
  be undone (``compress``) is withheld.
* A withheld answer is complete: the 502 body its headers announce is sent, also when the
  upstream's answer had no body at all.
* WebSocket messages from the server are scrubbed across message boundaries (see
  ``MessageScrubber``); close reasons and ping/pong payloads through ``websocket_controls``.
* A rotation reaches answers already under way (``LiveSet``): the set is asked for again when
  the head arrives (a long poll decided before the rotation), before each streamed chunk and
  WebSocket message, and before a buffered body and the trailers; a changed set is switched to
  with the partial match held across the switch, and the values scrubbed so far stay in it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from broker_proxy.addons import websocket_controls
from mitmproxy import http

from broker_proxy.decision.llm_usage import UsageMeter
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, MediaWithholding
from broker_proxy.request.scrub_scope import ScrubScope
from broker_proxy.scrubbing.content_decoding import (
    BodyNotDecodable,
    DecodeLimits,
    StreamDecoder,
    decode_whole,
    parse_content_encoding,
    parse_transfer_encoding,
)
from broker_proxy.scrubbing.grant_scrub import GrantScrub
from broker_proxy.scrubbing.nested_bodies import (
    SNIFF_LENGTH,
    CompressedBodyGuard,
    looks_compressed,
    media_coding,
    scan_whole,
)
from broker_proxy.scrubbing.scrubber import MessageScrubber, Scrubber, StreamScrubber, scrubber_for

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


# The broker's ``live_scrub``: an answer's set again if a value changed since a generation.
Refresh = Callable[[ScrubScope, int], GrantScrub | None]


class LiveSet:
    """One answer's scrub set, switched when a value changes while the answer is under way.

    ``changed`` costs one call and an integer compare while nothing changed. A new set keeps
    every value the old one had (a value never stops being scrubbed mid-answer) and adds the
    new ones; its scrubber comes from the shared caches (patterns compiled once per value).
    """

    __slots__ = ("_refresh", "_scope", "generation", "scrub")

    def __init__(self, verdict: Allowed, refresh: Refresh) -> None:
        assert verdict.scrub_scope is not None
        self._refresh = refresh
        self._scope = verdict.scrub_scope
        self.generation = verdict.scrub_generation
        self.scrub = verdict.scrub

    def __repr__(self) -> str:
        return f"<LiveSet {len(self.scrub)} values at {self.generation}>"

    def changed(self) -> Scrubber | None:
        """The new scrubber when the set changed since the last call, else None."""
        fresh = self._refresh(self._scope, self.generation)
        if fresh is None:
            return None
        self.generation = fresh.generation
        merged = dict(fresh.values)
        known = {value for value, _ in merged.values()}
        for label, (value, placeholder) in self.scrub.items():
            if value not in known:
                merged[label if label not in merged else label + "#was"] = (value, placeholder)
        if merged == self.scrub:
            return None
        self.scrub = merged
        return _SCRUBBERS.get(self._scope, merged)


def live_set(verdict: Allowed | None, refresh: Refresh | None) -> LiveSet | None:
    if verdict is None or refresh is None or verdict.scrub_scope is None:
        return None
    return LiveSet(verdict, refresh)


class _BodyStream:
    """``flow.response.stream``: bytes in, scrubbed bytes out; called with b"" at the end.

    A body that is itself compressed (its media type or first bytes say so) is searched inside
    and passed on unchanged, or cut (``nested_bodies``); its first bytes are held to decide.
    """

    def __init__(self, flow: http.HTTPFlow, scrubber: Scrubber,
                 decoder: StreamDecoder | None, live: LiveSet | None = None,
                 content_type: str | None = None, withhold: MediaWithholding | None = None,
                 meter: UsageMeter | None = None) -> None:
        self._flow = flow
        self._withhold = withhold
        self._decoder = decoder
        self._live = live
        self.scrubber = scrubber
        self._content_type = content_type
        self.scrubbing: StreamScrubber = scrubber.stream()
        self._compressed: CompressedBodyGuard | None = None
        self._head: bytes | None = b""  # None once the body's kind is known
        self.failed = False
        self._meter = meter  # reads LLM usage from the decoded bytes as they pass

    def _pass(self, plain: bytes, *, final: bool) -> bytes:
        if self._head is not None:
            self._head += plain
            if len(self._head) < SNIFF_LENGTH and not final:
                return b""
            plain, self._head = self._head, None
            if self._withhold is not None and (pattern := self._withhold.sniffed(plain)):
                raise _WithheldByPolicy(_withheld_message(pattern))  # cut before any byte
            if not self.scrubber.empty and looks_compressed(plain, self._content_type):
                self._compressed = CompressedBodyGuard(
                    self.scrubber, STREAMED_LIMITS, media_coding(self._content_type))
        if self._compressed is not None:
            out = self._compressed.feed(plain)
            return out + self._compressed.finish() if final else out
        out = self.scrubbing.feed(plain)
        return out + self.scrubbing.finish() if final else out

    def __call__(self, data: bytes) -> list[bytes]:
        # A list, never b"": mitmproxy frames an empty bytes chunk as HTTP/1's last chunk.
        if self.failed:
            return []
        try:
            if self._live is not None and (switched := self._live.changed()) is not None:
                self.scrubber = switched  # a rotation: the new set from this chunk on
                self.scrubbing = self.scrubbing.rebind(switched)
            if data:
                plain = self._decoder.feed(data) if self._decoder else data
                out = self._pass(plain, final=False)
            else:
                plain = self._decoder.finish() if self._decoder else b""
                out = self._pass(plain, final=True)
            if self._meter is not None:
                self._meter.feed(plain)
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
    grant_id: str | None
    counts: dict[str, int] = field(default_factory=dict)
    body: _BodyStream | None = None
    buffered_codings: list[str] | None = None
    withheld: bytes | None = None  # the 502 body that replaced the answer
    messages: MessageScrubber | None = None
    meter: UsageMeter | None = None  # an LLM answer under a budget: its usage, as it passes
    live: LiveSet | None = None
    withhold: MediaWithholding | None = None  # the answer's host withholds these media types

    def switch_if_changed(self) -> None:
        """A rotation while the answer is under way: scrub for the new set from here on."""
        if self.live is None or (switched := self.live.changed()) is None:
            return
        self.scrubber = switched
        if self.messages is not None:
            self.messages = self.messages.rebind(switched)
        if self.body is not None:
            self.body.scrubber = switched
            self.body.scrubbing = self.body.scrubbing.rebind(switched)

    def control_payload(self, payload: bytes) -> bytes:
        """A WebSocket close reason or ping/pong payload from the server, scrubbed whole."""
        self.switch_if_changed()
        scrubbed, found = self.scrubber.scrub(payload)
        _add(self.counts, found)
        return scrubbed


class _WithheldByPolicy(BodyNotDecodable):
    """The body is of a media type its host's ``withhold`` list names."""


def _withheld_message(pattern: str) -> str:
    # Names the policy's pattern, never the upstream's own Content-Type text.
    return f"answers of media type {pattern} from this host are withheld by the policy"


def _withhold(flow: http.HTTPFlow, state: ScrubState, message: str) -> None:
    denied = Denied(502, codes.RESPONSE_WITHHELD, message, state.grant_id)
    state.withheld = denied.body()
    flow.response = http.Response.make(502, state.withheld, denied.headers())
    # Streamed, mitmproxy sends only what the callable returns: the 502 body, at the end. An
    # upstream answer without a body never streams: ``on_response`` puts the body back then.
    withheld = state.withheld
    flow.response.stream = lambda data: [] if data else [withheld]


def withhold_after_error(flow: http.HTTPFlow, verdict: Allowed | None) -> None:
    """``responseheaders`` failed: answer 502 rather than pass anything on unscrubbed."""
    state = ScrubState(scrubber_for({}), verdict.grant_id if verdict else None)
    flow.metadata[STATE_KEY] = state
    _withhold(flow, state, "the answer could not be scrubbed")


def _scrub_head(response: http.Response, state: ScrubState) -> bool:
    """Status reason and every header (Set-Cookie, Location, WWW-Authenticate, ...).

    Returns whether a header changed; the headers are rebuilt only then.
    """
    reason, found = state.scrubber.scrub(response.data.reason)
    response.data.reason = reason
    _add(state.counts, found)
    fields = []
    changed = False
    for name, value in response.headers.fields:
        new_name, found_name = state.scrubber.scrub(name)
        new_value, found_value = state.scrubber.scrub(value)
        if found_name or found_value:
            changed = True
            _add(state.counts, found_name)
            _add(state.counts, found_value)
        fields.append((new_name, new_value))
    if changed:
        response.headers = http.Headers(fields)
    return changed


_PLANNING_HEADERS = (b"transfer-encoding", b"content-encoding", b"content-length",
                     b"content-range")


def _planning_headers(response: http.Response) -> dict[bytes, str]:
    """The headers the body's plan reads, in one pass over the raw fields.

    As ``Headers.get`` gives them (repeated fields joined with ", "), without its per-lookup
    walk and conversions: four of those were a good part of an answer's cost on keep-alive.
    """
    found: dict[bytes, list[bytes]] = {}
    for name, value in response.headers.fields:
        key = name.lower()
        if key in _PLANNING_HEADERS:
            found.setdefault(key, []).append(value)
    return {key: b", ".join(values).decode("utf-8", "surrogateescape")
            for key, values in found.items()}


class _GrantScrubbers:
    """The last scrubber made for each grant, reused while the grant's values are the same.

    Making one costs a keyed digest and two cache lookups per secret: little, but on every
    answer. Bounded; the repr names no value.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: dict[object, tuple[dict[str, tuple[str, str]], Scrubber]] = {}

    def __repr__(self) -> str:
        return f"<_GrantScrubbers {len(self._entries)} grants>"

    def get(self, key: object, scrub: dict[str, tuple[str, str]]) -> Scrubber:
        """``key``: the answer's scope (grant and host), or its grant id."""
        if key is None:
            return scrubber_for(scrub)
        entry = self._entries.get(key)
        if entry is not None and (entry[0] is scrub or entry[0] == scrub):
            return entry[1]
        scrubber = scrubber_for(scrub)
        self._entries.pop(key, None)
        self._entries[key] = (scrub, scrubber)
        while len(self._entries) > self._size:
            self._entries.pop(next(iter(self._entries)), None)
        return scrubber


_SCRUBBERS = _GrantScrubbers(4096)  # one per (grant, host) in use


def _has_body(flow: http.HTTPFlow) -> bool:
    assert flow.response is not None
    status = flow.response.status_code
    return not (flow.request.method.upper() == "HEAD" or status < 200 or status in (204, 304))


def on_response_headers(flow: http.HTTPFlow, verdict: Allowed | None,
                        refresh: Refresh | None = None) -> None:
    """``responseheaders``: scrub the head for the answer's set, plan the body."""
    response = flow.response
    assert response is not None
    complete = verdict is None or verdict.scrub_complete
    live = live_set(verdict, refresh)
    scrubber = _answer_scrubber(verdict, live)
    withhold = verdict.withhold if verdict is not None else None
    # A host with a withhold list: its bodies are looked at (first bytes, codings undone).
    scrub = not scrubber.empty or withhold is not None
    head = _planning_headers(response)
    transfer = head.get(b"transfer-encoding")
    if not scrub and complete and (transfer is None or transfer.strip().lower() == "chunked"):
        # Nothing to scrub: stream the body untouched so memory stays bounded.
        response.stream = True
        return
    state = ScrubState(scrubber, verdict.grant_id if verdict else None, live=live,
                       withhold=withhold)
    if verdict is not None and verdict.budget:
        state.meter = UsageMeter(response.headers.get("content-type"))
    flow.metadata[STATE_KEY] = state
    if withhold is not None and _has_body(flow) and (
            pattern := withhold.declared(response.headers.get("content-type"))):
        _withhold(flow, state, _withheld_message(pattern))
        return
    if not complete:
        _withhold(flow, state, "a secret of this grant cannot be resolved, so the answer "
                  "cannot be scrubbed")
        return
    if scrub and (response.status_code == 206 or b"content-range" in head):
        _withhold(flow, state, "partial content is not passed on for a grant that holds "
                  "secrets")
        return
    if _scrub_head(response, state):
        head = _planning_headers(response)
    if response.status_code == 101:
        flow.metadata[websocket_controls.SCRUB_KEY] = state.control_payload
    if not _has_body(flow):
        return
    try:
        # Content codings are undone only to scrub; transfer codings always (they were applied
        # after the content codings, so they are undone first: last in the list).
        codings = parse_content_encoding(head.get(b"content-encoding")) if scrub else []
        codings += parse_transfer_encoding(transfer)
    except BodyNotDecodable as error:
        _withhold(flow, state, f"the answer could not be scrubbed: {error}")
        return
    length = head.get(b"content-length", "")
    if transfer is None and length.isdigit() and int(length) <= (
            BUFFER_ENCODED_UP_TO if codings else BUFFER_PLAIN_UP_TO):
        # Scrubbed whole in ``response`` (an encoded body decoded first, 502 if that fails).
        state.buffered_codings = codings
        return
    _stream_body(flow, state, codings, scrub=scrub)


def _answer_scrubber(verdict: Allowed | None, live: LiveSet | None) -> Scrubber:
    """The scrubber for the answer's set, from the shared caches.

    A grant whose every value is too short to be looked for (``Scrubber.empty``) has nothing
    to scrub either: its answers take the same path as a grant without secrets. A long poll
    decided before a rotation is answered after it: ``changed`` catches that.
    """
    if live is not None and (switched := live.changed()) is not None:
        return switched
    if verdict is None:
        return scrubber_for({})
    return _SCRUBBERS.get(verdict.scrub_scope or verdict.grant_id,
                          live.scrub if live is not None else verdict.scrub)


def _stream_body(flow: http.HTTPFlow, state: ScrubState, codings: list[str], *,
                 scrub: bool) -> None:
    """Scrub (or only decode) the body chunk by chunk as it passes: its length changes."""
    response = flow.response
    assert response is not None
    decoder = StreamDecoder(codings, STREAMED_LIMITS) if codings else None
    dropped: tuple[str, ...] = ("content-length", "transfer-encoding")
    if scrub:
        dropped += ("content-encoding", *_DIGEST_HEADERS)
    for name in dropped:
        response.headers.pop(name, None)
    if not (response.is_http2 or response.is_http3):
        response.headers["transfer-encoding"] = "chunked"
    content_type = response.headers.get("content-type") if scrub else None
    state.body = _BodyStream(flow, state.scrubber, decoder, state.live, content_type,
                             state.withhold, state.meter)
    response.stream = state.body


def on_response(flow: http.HTTPFlow, verdict: Allowed | None) -> dict[str, int]:
    """``response``: the buffered body and trailers; returns the redactions by secret."""
    response = flow.response
    assert response is not None
    state = flow.metadata.get(STATE_KEY)
    if state is None:
        if verdict is None or (scrubber_for(verdict.scrub).empty and verdict.scrub_complete):
            return {}  # nothing to scrub (the body, if any, streamed through untouched)
        # ``responseheaders`` did not run (an embedding without it): scrub it buffered.
        state = ScrubState(scrubber_for(verdict.scrub), verdict.grant_id)
        if not verdict.scrub_complete:
            _withhold(flow, state, "a secret of this grant cannot be resolved, so the answer "
                      "cannot be scrubbed")
        else:
            _scrub_head(response, state)
            try:
                state.buffered_codings = parse_content_encoding(
                    response.headers.get("content-encoding"))
            except BodyNotDecodable as error:
                _withhold(flow, state, f"the answer could not be scrubbed: {error}")
    if state.withheld is not None:
        assert flow.response is not None
        if flow.response.raw_content != state.withheld:
            # Never streamed (the upstream's answer had no body): without this, headers that
            # announce the 502 body would be followed by none, and the client would hang.
            flow.response.stream = False
            flow.response.content = state.withheld
        return state.counts
    state.switch_if_changed()  # a rotation while the body was read: the new set for the rest
    if state.body is not None:
        state.scrubber = state.body.scrubber  # switched by the stream itself, maybe
        _add(state.counts, state.body.scrubbing.counts)
    elif response.raw_content:
        _scrub_buffered_body(flow, state)
    if response.trailers:
        fields = []
        for name, value in response.trailers.fields:
            value, found = state.scrubber.scrub(value)
            _add(state.counts, found)
            fields.append((name, value))
        response.trailers = http.Headers(fields)
    return state.counts


def _scrub_buffered_body(flow: http.HTTPFlow, state: ScrubState) -> None:
    response = flow.response
    assert response is not None and response.raw_content is not None
    try:
        body = response.raw_content
        if state.buffered_codings:
            body = decode_whole(body, state.buffered_codings, BUFFERED_LIMITS)
        content_type = response.headers.get("content-type")
        if state.withhold is not None and (pattern := state.withhold.sniffed(
                body[:SNIFF_LENGTH])):
            raise _WithheldByPolicy(_withheld_message(pattern))
        if not state.scrubber.empty and looks_compressed(body[:SNIFF_LENGTH], content_type):
            # Compressed inside: searched, then passed on as it is (see nested_bodies).
            scan_whole(body, state.scrubber, BUFFERED_LIMITS, media_coding(content_type))
            if state.buffered_codings:
                for name in ("content-encoding", *_DIGEST_HEADERS):
                    response.headers.pop(name, None)
                response.set_content(body)
            return
    except BodyNotDecodable as error:
        message = str(error) if isinstance(error, _WithheldByPolicy) else (
            f"the answer could not be scrubbed: {error}")
        denied = Denied(502, codes.RESPONSE_WITHHELD, message, state.grant_id)
        state.withheld = denied.body()  # the audit record says withheld (``was_withheld``)
        flow.response = http.Response.make(502, state.withheld, denied.headers())
        return
    if state.meter is not None:
        state.meter.feed(body)
    scrubbed, found = state.scrubber.scrub(body)
    if not found and not state.buffered_codings:
        return  # nothing to take out of a plain body: it goes on as it came (digests hold)
    _add(state.counts, found)
    for name in ("content-encoding", *_DIGEST_HEADERS):
        response.headers.pop(name, None)
    response.set_content(scrubbed)  # also sets Content-Length


def on_websocket_message(flow: http.HTTPFlow, verdict: Allowed,
                         refresh: Refresh | None = None) -> dict[str, int]:
    """Scrub the newest server message; returns the redactions it made."""
    assert flow.websocket is not None
    message = flow.websocket.messages[-1]
    if message.from_client:
        return {}
    state = flow.metadata.get(STATE_KEY)
    if state is None:
        live = live_set(verdict, refresh)
        if not verdict.scrub and live is None:
            return {}
        state = ScrubState(scrubber_for(verdict.scrub), verdict.grant_id, live=live)
        flow.metadata[STATE_KEY] = state
    if state.messages is None:
        state.messages = MessageScrubber(state.scrubber)
    state.switch_if_changed()  # a rotation since the last message: the new set from this one
    before = dict(state.messages.counts)
    message.content = state.messages.message(message.content)
    return {name: count - before.get(name, 0) for name, count in state.messages.counts.items()
            if count != before.get(name, 0)}


def usage_read(flow: http.HTTPFlow) -> tuple[int, int] | None:
    """(input, output) tokens the answer reported, None when unread (llm_usage.py)."""
    state: ScrubState | None = flow.metadata.get(STATE_KEY)
    if state is None or state.meter is None or state.withheld is not None:
        return None
    if state.body is not None and state.body.failed:
        return None
    return state.meter.finish()


def was_withheld(flow: http.HTTPFlow) -> bool:
    """Did the scrubber replace this flow's answer with a 502 (for the audit record)?"""
    state = flow.metadata.get(STATE_KEY)
    return state is not None and state.withheld is not None
