"""A body that is itself compressed: looked inside, passed on unchanged, or withheld.

A ``.tar.gz``, ``.tar.xz`` or ``.zip`` download, an ``application/gzip`` answer, or a body
gzip-compressed twice under one ``Content-Encoding: gzip`` reaches the agent as compressed
bytes, which the scrubber cannot read and the agent can undo. Such a body is recognised by its
media type or by the magic bytes it starts with (after the content codings are undone), decoded
on the side within the same bomb bounds as a content coding (relative to the body as the agent
would get it; zip, xz and bzip2 through ``archive_streams``), and every layer (the compressed
bytes too: a gzip header may carry a file name in clear) is searched for the secrets. Found, or not
decodable within bounds: the answer is withheld. Not found: the body goes on as it came, byte
for byte (re-compressing a scrubbed copy would change a file the agent asked for, and cost ~36
MB/s of CPU).

Streaming: compressed bytes are released only once what they decode to has been searched and
no layer holds the start of a possible match, so the agent never holds a prefix of the stream
that would decode to part of a secret. ``BodyNotDecodable`` says why a body was withheld.
"""

from __future__ import annotations

import re

from broker_proxy.scrubbing.archive_streams import StdlibStream, ZipEntries
from broker_proxy.scrubbing.content_decoding import BodyNotDecodable, DecodeLimits, StreamDecoder
from broker_proxy.scrubbing.scrubber import Scrubber, StreamScrubber

# Media types whose body is one compressed stream (a coding the decoder knows).
COMPRESSED_MEDIA_TYPES = {
    "application/gzip": "gzip", "application/x-gzip": "gzip", "application/x-tgz": "gzip",
    "application/x-compressed-tar": "gzip", "application/zstd": "zstd",
    "application/x-zstd": "zstd", "application/zlib": "deflate",
    "application/x-brotli": "br", "application/brotli": "br",
    "application/zip": "zip", "application/x-zip-compressed": "zip",
    "application/x-xz": "xz", "application/x-bzip2": "bzip2", "application/x-bzip": "bzip2",
}
# Magic bytes: gzip (RFC 1952, deflate method), zstd frames, a zip's first local file header.
_MAGIC = ((b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"), (b"PK\x03\x04", "zip"),
          (b"\xfd7zXZ\x00", "xz"))
# bzip2: "BZh", the block size, then a block's or the stream end's 48-bit magic (plain text
# may well start with "BZh").
_BZIP2 = re.compile(rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)")
SNIFF_LENGTH = 10  # the bytes a body's kind is told from
MAX_DEPTH = 4  # compressed inside compressed, at most this deep; deeper is withheld
MAX_PENDING = 8 * 1024 * 1024  # compressed bytes held back while a partial match is open


class SecretInCompressedBody(BodyNotDecodable):
    """A secret was found inside a compressed body: the body is withheld."""


def media_coding(content_type: str | None) -> str | None:
    """The coding a body of this media type is compressed with, or None."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return COMPRESSED_MEDIA_TYPES.get(media)


def sniffed_coding(head: bytes) -> str | None:
    for magic, coding in _MAGIC:
        if head.startswith(magic):
            return coding
    return "bzip2" if _BZIP2.match(head) else None


class _Layer:
    """One level: search these bytes, and decode them if they are compressed."""

    def __init__(self, scrubber: Scrubber, limits: DecodeLimits, coding: str | None,
                 depth: int) -> None:
        self._scrubber = scrubber
        self._limits = limits
        self._search: StreamScrubber = scrubber.stream()
        self._coding = coding  # None: sniff the first bytes
        self._head = b""
        self._decoder: StreamDecoder | ZipEntries | StdlibStream | None = None
        self._inner: _Layer | None = None
        self._depth = depth
        self.written = 0  # decoded bytes this layer produced

    def feed(self, data: bytes, *, final: bool = False) -> None:
        self._search.feed(data)
        if final:
            self._search.finish()
        if self._search.counts:
            raise SecretInCompressedBody("a secret is inside the compressed body")
        if self._decoder is None and self._coding is None:
            self._head += data
            if len(self._head) < SNIFF_LENGTH and not final:
                return
            data, self._head = self._head, b""
            self._coding = sniffed_coding(data) or ""
        if not self._coding:
            return  # not compressed: searched above, nothing inside
        if self._decoder is None:
            if self._depth >= MAX_DEPTH:
                raise BodyNotDecodable("compressed more times than the proxy looks inside")
            if self._coding == "zip":  # the entries' contents, one after the other
                self._decoder = ZipEntries(self._limits)
                self._inner = _Layer(self._scrubber, self._limits, "", self._depth + 1)
            elif self._coding in ("xz", "bzip2"):
                self._decoder = StdlibStream(self._coding, self._limits)
                self._inner = _Layer(self._scrubber, self._limits, None, self._depth + 1)
            else:
                self._decoder = StreamDecoder([self._coding], self._limits)
                self._inner = _Layer(self._scrubber, self._limits, None, self._depth + 1)
        assert self._inner is not None
        inner = self._decoder.feed(data)
        if final:
            inner += self._decoder.finish()
        self.written += len(inner)
        self._inner.feed(inner, final=final)

    @property
    def holding(self) -> bool:
        """Does any layer hold bytes that could start a secret?"""
        return (self._search.held_length > 0 or len(self._head) > 0
                or (self._inner is not None and self._inner.holding))

    def deepest_written(self) -> int:
        inner = self._inner.deepest_written() if self._inner is not None else 0
        return max(self.written, inner)


class CompressedBodyGuard:
    """Feed a compressed body's bytes (as the client will get them); get back what may go.

    ``coding`` is the compression its media type names, or None to sniff; the body's first
    bytes decide then, and a body that is not compressed after all is only searched.
    """

    def __init__(self, scrubber: Scrubber, limits: DecodeLimits, coding: str | None) -> None:
        self._top = _Layer(scrubber, limits, coding, 1)
        self._limits = limits
        self._pending: list[bytes] = []
        self._pending_length = 0
        self._read = 0

    def feed(self, data: bytes) -> bytes:
        self._read += len(data)
        self._top.feed(data)
        self._check_ratio()
        self._pending.append(data)
        self._pending_length += len(data)
        if self._top.holding:
            if self._pending_length > MAX_PENDING:
                raise BodyNotDecodable("a possible secret inside the compressed body stays open")
            return b""
        return self._release()

    def finish(self) -> bytes:
        self._top.feed(b"", final=True)
        self._check_ratio()
        return self._release()

    def _release(self) -> bytes:
        out = b"".join(self._pending)
        self._pending, self._pending_length = [], 0
        return out

    def _check_ratio(self) -> None:
        limits = self._limits
        # The bomb bounds hold against the body's own length, however deep the nesting.
        if self._top.deepest_written() > limits.ratio_allowance + limits.max_ratio * self._read:
            raise BodyNotDecodable("decoded body exceeds the compression ratio limit")


def scan_whole(body: bytes, scrubber: Scrubber, limits: DecodeLimits,
               coding: str | None) -> None:
    """Search a buffered body; raises ``BodyNotDecodable`` (or its subclass) to withhold it."""
    guard = CompressedBodyGuard(scrubber, limits, coding)
    guard.feed(body)
    guard.finish()


def looks_compressed(head: bytes, content_type: str | None) -> bool:
    """Should a body starting with ``head`` go through ``CompressedBodyGuard``?"""
    return media_coding(content_type) is not None or sniffed_coding(head) is not None
