"""A compressed body inside the body: searched within bounds, passed unchanged, or withheld."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import secrets
import zipfile
import zlib

import pytest

from broker_proxy.scrubbing.content_decoding import BodyNotDecodable, DecodeLimits
from broker_proxy.scrubbing.nested_bodies import (
    CompressedBodyGuard,
    SecretInCompressedBody,
    looks_compressed,
    media_coding,
    scan_whole,
)
from broker_proxy.scrubbing.scrubber import Scrubber

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]

LIMITS = DecodeLimits()


def _value() -> str:
    return "sk-nest-" + secrets.token_urlsafe(24)


def _scrubber(value: str) -> Scrubber:
    return Scrubber({"k": (value, "{{secret:k}}")})


def _archive(value: str) -> bytes:
    return b"tar-like header " * 100 + value.encode() + b" more file content " * 100


@pytest.mark.parametrize("wrap", [
    gzip.compress,
    lambda body: gzip.compress(gzip.compress(body)),  # a content coding applied twice
    zstd.compress,
    lambda body: zstd.compress(gzip.compress(body)),
], ids=["gzip", "gzip-twice", "zstd", "gzip-in-zstd"])
def test_a_secret_inside_a_compressed_body_withholds_it(wrap) -> None:
    value = _value()
    body = wrap(_archive(value))
    assert looks_compressed(body[:4], None)  # sniffed: no media type needed
    with pytest.raises(SecretInCompressedBody):
        scan_whole(body, _scrubber(value), LIMITS, None)


def test_a_compressed_body_without_a_secret_passes_byte_for_byte() -> None:
    value = _value()
    body = gzip.compress(b"nothing secret here " * 5000)
    scan_whole(body, _scrubber(value), LIMITS, None)
    for size in (1, 7, 4096):
        guard = CompressedBodyGuard(_scrubber(value), LIMITS, None)
        out = b"".join(guard.feed(body[i:i + size]) for i in range(0, len(body), size))
        assert out + guard.finish() == body


def test_a_secret_in_the_gzip_header_file_name_is_found() -> None:
    value = _value()
    compressor = zlib.compressobj(wbits=-15)
    deflated = compressor.compress(b"clean content") + compressor.flush()
    header = b"\x1f\x8b\x08\x08" + b"\0" * 4 + b"\0\xff" + value.encode() + b"\0"
    body = header + deflated + zlib.crc32(b"clean content").to_bytes(4, "little") + (
        len(b"clean content").to_bytes(4, "little"))
    assert gzip.decompress(body) == b"clean content"
    with pytest.raises(SecretInCompressedBody):
        scan_whole(body, _scrubber(value), LIMITS, None)


def test_the_stream_never_releases_bytes_that_decode_to_part_of_the_secret() -> None:
    value = _value()
    body = gzip.compress(_archive(value), compresslevel=1)
    for size in range(1, 200, 3):
        guard = CompressedBodyGuard(_scrubber(value), LIMITS, None)
        released = b""
        with pytest.raises(SecretInCompressedBody):
            for i in range(0, len(body), size):
                released += guard.feed(body[i:i + size])
            guard.finish()
        prefix = zlib.decompressobj(31).decompress(released)
        assert value[:8].encode() not in prefix, size


def test_a_media_type_names_the_compression_and_a_lie_is_withheld() -> None:
    assert media_coding("application/gzip; charset=binary") == "gzip"
    assert media_coding("text/plain") is None
    assert looks_compressed(b"plai", "application/x-gzip")
    with pytest.raises(BodyNotDecodable):
        scan_whole(b"plain text, not gzip at all", _scrubber(_value()), LIMITS, "gzip")


def test_a_nested_bomb_stops_at_the_ratio_limit() -> None:
    bomb = gzip.compress(gzip.compress(b"\0" * (256 << 20)))
    with pytest.raises(BodyNotDecodable, match="ratio limit"):
        scan_whole(bomb, _scrubber(_value()), LIMITS, None)


def test_too_deep_a_nesting_is_withheld() -> None:
    body = b"clean"
    for _ in range(6):
        body = gzip.compress(body)
    with pytest.raises(BodyNotDecodable, match="compressed more times"):
        scan_whole(body, _scrubber(_value()), LIMITS, None)


def _zip(files: dict[str, bytes], *, method: int = zipfile.ZIP_DEFLATED,
         streamed: bool = False) -> bytes:
    """A zip as ``zipfile`` writes it; ``streamed``: to an unseekable file (data descriptors)."""
    buffer = io.BytesIO()
    target: io.RawIOBase | io.BytesIO = _Unseekable(buffer) if streamed else buffer
    with zipfile.ZipFile(target, "w", compression=method) as archive:  # type: ignore[arg-type]
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


class _Unseekable(io.RawIOBase):
    def __init__(self, buffer: io.BytesIO) -> None:
        self._buffer = buffer

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        return self._buffer.write(data)

    def flush(self) -> None:
        pass


@pytest.mark.parametrize("streamed", [False, True], ids=["sizes", "data-descriptors"])
def test_a_secret_in_a_zip_entry_withholds_the_archive(streamed: bool) -> None:
    value = _value()
    body = _zip({"README.md": b"hello " * 300, "src/config.py": _archive(value),
                 "LICENSE": b"MIT " * 100}, streamed=streamed)
    assert looks_compressed(body[:4], None)
    with pytest.raises(SecretInCompressedBody):
        scan_whole(body, _scrubber(value), LIMITS, None)
    clean = _zip({"README.md": b"hello " * 300, "a/b.txt": b"nothing " * 1000},
                 streamed=streamed)
    for size in (1, 13, 65536):
        guard = CompressedBodyGuard(_scrubber(value), LIMITS, None)
        out = b"".join(guard.feed(clean[i:i + size]) for i in range(0, len(clean), size))
        assert out + guard.finish() == clean


def test_a_zip_the_proxy_cannot_read_is_withheld() -> None:
    value = _value()
    bzip = _zip({"a.txt": b"clean " * 100}, method=zipfile.ZIP_BZIP2)
    with pytest.raises(BodyNotDecodable, match="method 12"):
        scan_whole(bzip, _scrubber(value), LIMITS, None)
    stored = _zip({"a.txt": _archive(value)}, method=zipfile.ZIP_STORED)
    with pytest.raises(SecretInCompressedBody):  # stored: found as raw bytes
        scan_whole(stored, _scrubber(value), LIMITS, None)
    truncated = _zip({"a.txt": secrets.token_bytes(5000)})[:300]  # inside the entry
    with pytest.raises(BodyNotDecodable):
        scan_whole(truncated, _scrubber(value), LIMITS, None)


@pytest.mark.parametrize("compress", [lzma.compress, bz2.compress,
                                      lambda body: bz2.compress(body) + bz2.compress(b"more")],
                         ids=["xz", "bzip2", "bzip2-two-streams"])
def test_xz_and_bzip2_bodies_are_looked_inside(compress) -> None:
    value = _value()
    body = compress(_archive(value))
    assert looks_compressed(body[:10], None)
    with pytest.raises(SecretInCompressedBody):
        scan_whole(body, _scrubber(value), LIMITS, None)
    clean = compress(b"nothing here " * 1000)
    guard = CompressedBodyGuard(_scrubber(value), LIMITS, None)
    out = b"".join(guard.feed(clean[i:i + 100]) for i in range(0, len(clean), 100))
    assert out + guard.finish() == clean


def test_text_that_starts_like_bzip2_is_not_taken_for_it() -> None:
    assert not looks_compressed(b"BZh, said the bee", None)
    scan_whole(b"BZh, said the bee", _scrubber(_value()), LIMITS, None)
