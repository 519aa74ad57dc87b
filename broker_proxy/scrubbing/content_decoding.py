"""Undoing Content-Encoding within bounds, so a compressed echo of a secret can be scrubbed.

A secret inside a gzip body is invisible to the scrubber, so a flow with secrets to scrub has its
body decoded before scrubbing; transfer codings other than chunked are undone on every flow.
Decoding is where a hostile or broken upstream hurts most (a kilobyte of zstd can inflate to
gigabytes), so every decoder produces output in bounded slices
and the whole is held to a size limit and a ratio limit: past either, decoding stops with
``BodyNotDecodable`` and the caller withholds the body rather than pass it on unscrubbed.

Supported: gzip (also x-gzip, several members), deflate (zlib-wrapped or raw, as servers send
both), br, zstd (several frames), identity, and any stack of them (``Content-Encoding: gzip, br``
is undone right to left).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, cast

import brotli

from broker_proxy.errors import BrokerError

try:  # Python 3.14 ships zstd; before that the backport has the same API.
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the interpreter
    from backports import zstd

try:  # ISA-L's inflate: zlib's API at about 2.7 times its speed (text, 64 KiB slices)
    from isal import isal_zlib
except ImportError:  # pragma: no cover - a platform without its wheel: zlib itself
    isal_zlib = None  # type: ignore[assignment]

_INFLATE_ERRORS: tuple[type[Exception], ...] = (
    (zlib.error,) if isal_zlib is None else (zlib.error, cast("type[Exception]", isal_zlib.error)))


class _Inflater(Protocol):
    """What both zlib's and ISA-L's decompress objects offer."""

    unconsumed_tail: bytes
    unused_data: bytes
    eof: bool

    def decompress(self, data: bytes, max_length: int, /) -> bytes: ...


def _inflater(wbits: int) -> _Inflater:
    return cast(_Inflater, (zlib if isal_zlib is None else isal_zlib).decompressobj(wbits))


_SLICE = 64 * 1024  # the most any decoder step may produce at once


class BodyNotDecodable(BrokerError):
    """The body's encoding is unknown, corrupt, or inflates past the limits."""

    status, code = 415, "body_not_decodable"


class BodyTooLarge(BodyNotDecodable):
    """The body inflates past the size or compression ratio limit (a request's is a 413)."""

    status, code = 413, "body_too_large"


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_output: int | None = None  # decoded bytes in total; None for an endless stream
    max_ratio: int = 200  # decoded bytes per encoded byte, beyond ``ratio_allowance``
    ratio_allowance: int = 1024 * 1024  # small bodies may inflate more (short JSON, gzip header)


def parse_content_encoding(header: str | None) -> list[str]:
    """The codings applied, in the order they were applied; identity removed."""
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    codings = ["gzip" if c == "x-gzip" else c for c in codings if c != "identity"]
    for coding in codings:
        if coding not in _STAGES:
            raise BodyNotDecodable(f"unsupported content-encoding {coding!r}")
    return codings


def parse_transfer_encoding(header: str | None) -> list[str]:
    """The transfer codings to undo besides chunked (which mitmproxy already undid).

    An upstream may answer ``Transfer-Encoding: gzip, chunked``: the body is gzip under the
    chunk framing. Such codings are undone like content codings, within the same bounds, so
    that no client is handed encoded bytes under a label that says otherwise.
    """
    codings = [c.strip().lower() for c in (header or "").split(",") if c.strip()]
    codings = ["gzip" if c == "x-gzip" else c for c in codings
               if c not in ("chunked", "identity")]
    for coding in codings:
        if coding not in _STAGES or coding in ("br", "zstd"):  # not transfer codings
            raise BodyNotDecodable(f"unsupported transfer-encoding {coding!r}")
    return codings


class _Stage:
    def feed(self, data: bytes) -> Iterator[bytes]:
        raise NotImplementedError

    def finish(self) -> Iterator[bytes]:
        raise NotImplementedError


class _Zlib(_Stage):
    """gzip (members one after another) or deflate (zlib header or raw)."""

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._head = b""  # deflate: the first two bytes say whether there is a zlib header
        self._decoder: _Inflater | None = (
            _inflater(31) if coding == "gzip" else None)
        self._in_member = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._decoder is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            zlib_header = data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0
            self._decoder = _inflater(15 if zlib_header else -15)
        try:
            while data:
                self._in_member = True
                yield self._decoder.decompress(data, _SLICE)
                data = self._decoder.unconsumed_tail
                while not data and not self._decoder.eof:
                    piece = self._decoder.decompress(b"", _SLICE)
                    if not piece:
                        break
                    yield piece
                if self._decoder.eof:
                    self._in_member = False
                    rest = self._decoder.unused_data + data
                    if rest and self._coding != "gzip":
                        raise BodyNotDecodable("data after the end of a deflate stream")
                    if rest:
                        self._decoder = _inflater(31)
                    data = rest
        except _INFLATE_ERRORS as error:
            raise BodyNotDecodable(f"{self._coding} body is corrupt") from error

    def finish(self) -> Iterator[bytes]:
        if self._head or (self._in_member and self._decoder is not None
                          and not self._decoder.eof):
            raise BodyNotDecodable(f"{self._coding} body is truncated")
        return iter(())


class _Brotli(_Stage):
    def __init__(self) -> None:
        self._decoder = brotli.Decompressor()
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            if data:
                self._seen = True
                yield self._decoder.process(data, output_buffer_limit=_SLICE)
            while not self._decoder.can_accept_more_data():
                yield self._decoder.process(b"", output_buffer_limit=_SLICE)
        except brotli.error as error:
            raise BodyNotDecodable("br body is corrupt") from error

    def finish(self) -> Iterator[bytes]:
        try:
            while self._seen and not self._decoder.is_finished():
                piece = self._decoder.process(b"", output_buffer_limit=_SLICE)
                if not piece:
                    raise BodyNotDecodable("br body is truncated")
                yield piece
        except brotli.error as error:
            raise BodyNotDecodable("br body is corrupt") from error


class _Zstd(_Stage):
    def __init__(self) -> None:
        self._decoder = zstd.ZstdDecompressor()
        self._in_frame = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        try:
            while data:
                self._in_frame = True
                yield self._decoder.decompress(data, _SLICE)
                while not self._decoder.needs_input and not self._decoder.eof:
                    yield self._decoder.decompress(b"", _SLICE)
                data = b""
                if self._decoder.eof:  # frames may follow one another
                    self._in_frame = False
                    data = self._decoder.unused_data
                    self._decoder = zstd.ZstdDecompressor()
        except zstd.ZstdError as error:
            raise BodyNotDecodable("zstd body is corrupt") from error

    def finish(self) -> Iterator[bytes]:
        if self._in_frame:
            raise BodyNotDecodable("zstd body is truncated")
        return iter(())


_STAGES = {"gzip": lambda: _Zlib("gzip"), "deflate": lambda: _Zlib("deflate"),
           "br": _Brotli, "zstd": _Zstd}


class StreamDecoder:
    """Decodes a stacked Content-Encoding chunk by chunk, within ``limits``."""

    def __init__(self, codings: list[str], limits: DecodeLimits) -> None:
        self._stages = [_STAGES[c]() for c in reversed(codings)]
        self._limits = limits
        self._read = 0
        self._written = 0

    def feed(self, data: bytes) -> bytes:
        self._read += len(data)
        return self._collect(self._through(0, data, final=False))

    def finish(self) -> bytes:
        return self._collect(self._through(0, b"", final=True))

    def _through(self, index: int, data: bytes, *, final: bool) -> Iterator[bytes]:
        if index == len(self._stages):
            if data:
                yield data
            return
        stage = self._stages[index]
        for piece in stage.feed(data):
            yield from self._through(index + 1, piece, final=False)
        if final:
            for piece in stage.finish():
                yield from self._through(index + 1, piece, final=False)
            yield from self._through(index + 1, b"", final=True)

    def _collect(self, pieces: Iterator[bytes]) -> bytes:
        out = []
        limits = self._limits
        for piece in pieces:
            self._written += len(piece)
            if limits.max_output is not None and self._written > limits.max_output:
                raise BodyTooLarge("decoded body exceeds the size limit")
            if self._written > limits.ratio_allowance + limits.max_ratio * self._read:
                raise BodyTooLarge("decoded body exceeds the compression ratio limit")
            out.append(piece)
        return b"".join(out)


def decode_whole(body: bytes, codings: list[str], limits: DecodeLimits) -> bytes:
    """Decode a buffered body; raises ``BodyNotDecodable`` like the stream does."""
    decoder = StreamDecoder(codings, limits)
    return decoder.feed(body) + decoder.finish()
