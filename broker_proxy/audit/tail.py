"""Reading the end of a log file: its last whole line and any torn bytes after it."""

from __future__ import annotations

import json
import os
from typing import Any, Final

TAIL_CHUNK: Final = 65536


def read_tail(fd: int, size: int) -> tuple[bytes | None, bytes]:
    """Return (last whole line or None, the bytes after the last newline) of the file's end."""
    pos, buf = size, b""
    while True:
        if pos > 0:
            step = min(TAIL_CHUNK, pos)
            pos -= step
            chunk = os.pread(fd, step, pos)
            if len(chunk) != step:
                raise OSError(5, "short read")
            buf = chunk + buf
        last_nl = buf.rfind(b"\n")
        if last_nl == -1:
            if pos == 0:
                return None, buf
            continue
        torn = buf[last_nl + 1 :]
        prev_nl = buf.rfind(b"\n", 0, last_nl)
        if prev_nl == -1 and pos > 0:
            continue
        return buf[prev_nl + 1 : last_nl], torn


def parse_record(line: bytes) -> dict[str, Any] | None:
    """The record on a line, or None when the line is not one (torn, garbage)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or type(record.get("seq")) is not int:
        return None
    return record
