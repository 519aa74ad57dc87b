"""A small gzip body that inflates enormously: the request-side decompression bomb."""

from __future__ import annotations

import functools
import zlib


@functools.cache
def gzip_bomb(inflated_mib: int = 500) -> bytes:
    """About inflated_mib MiB of zeros as gzip (~1 KiB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1024 * 1024)
    parts = [compressor.compress(zeros) for _ in range(inflated_mib)]
    parts.append(compressor.flush())
    return b"".join(parts)
