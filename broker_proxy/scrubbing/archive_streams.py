"""Archives that are not content codings, read as they stream: zip entries, xz, bzip2.

A zip (a repository's ``zipball``, an export) stores each file deflated on its own, so the
scrubber cannot read it and the agent can inflate it. ``ZipEntries`` walks the local file
headers in order (APPNOTE 4.3.7), inflates each deflated entry with a bounded decoder, passes
stored entries' bytes through, skips data descriptors, and stops at the central directory
(whose names the caller searches as raw bytes, like every header). What it cannot read is
``BodyNotDecodable``, so the body is withheld: an encrypted entry, a method other than stored or
deflate, a stored entry of unknown length, bytes that are not a zip.
"""

from __future__ import annotations

import bz2
import lzma
import struct

from broker_proxy.scrubbing.content_decoding import (
    _INFLATE_ERRORS,
    _SLICE,
    BodyNotDecodable,
    DecodeLimits,
    _Inflater,
    _inflater,
)

_LOCAL = b"PK\x03\x04"
_DESCRIPTOR = b"PK\x07\x08"
_DIRECTORY = (b"PK\x01\x02", b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07")
_HEADER = struct.Struct("<4sHHHHHIIIHH")  # 30 bytes
_STORED, _DEFLATED = 0, 8
_ZIP64_EXTRA = 0x0001


def _has_zip64(extra: bytes) -> bool:
    at = 0
    while at + 4 <= len(extra):
        kind, size = struct.unpack_from("<HH", extra, at)
        if kind == _ZIP64_EXTRA:
            return True
        at += 4 + size
    return False


class ZipEntries:
    """Feed an archive's bytes; get back the contents of its entries, within ``limits``."""

    def __init__(self, limits: DecodeLimits) -> None:
        self._limits = limits
        self._buffer = b""
        self._state = "header"  # header | stored | deflated | descriptor | directory
        self._left = 0  # stored: bytes of the entry still to come
        self._inflater: _Inflater | None = None
        self._descriptor = False  # the entry ends with a data descriptor
        self._zip64 = False
        self._read = 0
        self._written = 0

    def feed(self, data: bytes) -> bytes:
        self._read += len(data)
        self._buffer += data
        out: list[bytes] = []
        while self._step(out):
            pass
        return b"".join(out)

    def finish(self) -> bytes:
        if self._state not in ("header", "directory") or (
                self._state == "header" and self._buffer):
            raise BodyNotDecodable("zip archive is truncated")
        return b""

    def _emit(self, out: list[bytes], piece: bytes) -> None:
        self._written += len(piece)
        limits = self._limits
        if limits.max_output is not None and self._written > limits.max_output:
            raise BodyNotDecodable("decoded body exceeds the size limit")
        if self._written > limits.ratio_allowance + limits.max_ratio * self._read:
            raise BodyNotDecodable("decoded body exceeds the compression ratio limit")
        out.append(piece)

    def _step(self, out: list[bytes]) -> bool:
        """Make progress on the buffer; False when more bytes are needed."""
        if self._state == "directory":
            self._buffer = b""  # searched as raw bytes by the caller; nothing inside
            return False
        if self._state == "header":
            return self._header()
        if self._state == "stored":
            taken = self._buffer[:self._left]
            self._buffer = self._buffer[len(taken):]
            self._left -= len(taken)
            self._emit(out, taken)
            if self._left:
                return False
            self._state = "descriptor" if self._descriptor else "header"
            return True
        if self._state == "deflated":
            return self._inflate(out)
        return self._skip_descriptor()

    def _header(self) -> bool:
        if len(self._buffer) < 4:
            return False
        signature = self._buffer[:4]
        if signature in _DIRECTORY:
            self._state = "directory"
            return True
        if signature != _LOCAL:
            raise BodyNotDecodable("zip archive holds bytes that are not an entry")
        if len(self._buffer) < _HEADER.size:
            return False
        (_, _, flags, method, _, _, _, size, _, name_length,
         extra_length) = _HEADER.unpack_from(self._buffer)
        end = _HEADER.size + name_length + extra_length
        if len(self._buffer) < end:
            return False
        extra = self._buffer[_HEADER.size + name_length:end]
        self._buffer = self._buffer[end:]
        if flags & 0x1:
            raise BodyNotDecodable("zip entry is encrypted")
        self._descriptor = bool(flags & 0x8)
        self._zip64 = _has_zip64(extra)
        if method == _DEFLATED:
            self._inflater = _inflater(-15)
            self._state = "deflated"
        elif method == _STORED:
            if self._descriptor or self._zip64:
                raise BodyNotDecodable("zip entry is stored with no length the proxy reads")
            self._left = size
            self._state = "stored"
        else:
            raise BodyNotDecodable(f"zip entry is compressed with method {method}")
        return True

    def _inflate(self, out: list[bytes]) -> bool:
        inflater = self._inflater
        assert inflater is not None
        data, self._buffer = self._buffer, b""
        try:
            while data or inflater.unconsumed_tail:
                piece = inflater.decompress(data or inflater.unconsumed_tail, _SLICE)
                data = b""
                self._emit(out, piece)
                if inflater.eof:
                    break
                if not piece and not inflater.unconsumed_tail:
                    break
            while not inflater.eof:  # output still held inside the inflater
                piece = inflater.decompress(b"", _SLICE)
                if not piece:
                    break
                self._emit(out, piece)
        except _INFLATE_ERRORS as error:
            raise BodyNotDecodable("zip entry is corrupt") from error
        if not inflater.eof:
            return False
        self._buffer = inflater.unused_data + inflater.unconsumed_tail + self._buffer
        self._inflater = None
        self._state = "descriptor" if self._descriptor else "header"
        return True

    def _skip_descriptor(self) -> bool:
        sizes = 16 if self._zip64 else 8
        if len(self._buffer) < 4:
            return False
        length = 4 + 4 + sizes if self._buffer.startswith(_DESCRIPTOR) else 4 + sizes
        if len(self._buffer) < length:
            return False
        self._buffer = self._buffer[length:]
        self._state = "header"
        return True


class StdlibStream:
    """xz or bzip2 (several streams one after another), decoded in bounded slices.

    Not content codings (no HTTP coding names them), but ``.tar.xz`` and ``.tar.bz2`` are
    common downloads: looked inside like gzip, within the same bounds.
    """

    def __init__(self, kind: str, limits: DecodeLimits) -> None:
        self._kind = kind
        self._limits = limits
        self._decoder = self._new()
        self._read = 0
        self._written = 0
        self._in_stream = False

    def _new(self) -> lzma.LZMADecompressor | bz2.BZ2Decompressor:
        return lzma.LZMADecompressor() if self._kind == "xz" else bz2.BZ2Decompressor()

    def feed(self, data: bytes) -> bytes:
        self._read += len(data)
        out: list[bytes] = []
        try:
            while data or (self._in_stream and not self._decoder.needs_input
                           and not self._decoder.eof):
                self._in_stream = True
                piece = self._decoder.decompress(data, _SLICE)
                data = b""
                self._emit(out, piece)
                if self._decoder.eof:
                    self._in_stream = False
                    data = self._decoder.unused_data
                    self._decoder = self._new()
                elif not piece and self._decoder.needs_input:
                    break
        except (lzma.LZMAError, OSError, EOFError) as error:
            raise BodyNotDecodable(f"{self._kind} body is corrupt") from error
        return b"".join(out)

    def finish(self) -> bytes:
        if self._in_stream:
            raise BodyNotDecodable(f"{self._kind} body is truncated")
        return b""

    def _emit(self, out: list[bytes], piece: bytes) -> None:
        self._written += len(piece)
        limits = self._limits
        if limits.max_output is not None and self._written > limits.max_output:
            raise BodyNotDecodable("decoded body exceeds the size limit")
        if self._written > limits.ratio_allowance + limits.max_ratio * self._read:
            raise BodyNotDecodable("decoded body exceeds the compression ratio limit")
        out.append(piece)
