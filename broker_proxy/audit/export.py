"""`audit export`: the log as JSON lines or OCSF events, resumable without loss or duplicates.

The position is the output itself: writing to a file, the exporter reads the seq of the last
whole line already there and goes on from the next record, after cutting off a line torn by a
kill. So a killed export started again writes every record exactly once. A shipper reading
stdout keeps its own position and passes `--from-seq`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from broker_proxy.audit.export_ocsf import to_ocsf
from broker_proxy.audit.reading import LOG_TAG, ChainTail

FORMATS = ("jsonl", "ocsf")
_TAIL_BYTES = 1 << 20
BATCH = 512  # lines written per write(2): a kill loses at most the torn tail, which is cut off


class ExportError(Exception):
    """The export's output cannot be read back or written."""


def render(record: dict[str, Any], fmt: str) -> bytes:
    if fmt == "ocsf":
        body: dict[str, Any] = to_ocsf(record)
    else:
        body = {name: value for name, value in record.items() if name != LOG_TAG}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def seq_of_line(line: bytes) -> int | None:
    """The record seq an exported line carries (jsonl: `seq`, OCSF: `metadata.sequence`)."""
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    seq = data.get("seq")
    if type(seq) is not int and isinstance(data.get("metadata"), dict):
        seq = data["metadata"].get("sequence")
    return seq if type(seq) is int else None


def resume_point(output: Path) -> int | None:
    """The next seq to write to `output`, after cutting a torn last line; None if it is empty."""
    try:
        fd = os.open(output, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ExportError(f"cannot open {output}: {exc.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        base = max(0, size - _TAIL_BYTES)  # an exported line is far shorter than this
        tail = os.pread(fd, size - base, base)
        keep = tail.rfind(b"\n") + 1
        if keep < len(tail):
            os.ftruncate(fd, base + keep)  # a line torn by a kill: it is written again, whole
            tail = tail[:keep]
        if not tail:
            if base > 0:
                raise ExportError(f"{output} ends with a line too long to be an exported record")
            return None
        seq = seq_of_line(tail[:-1].rsplit(b"\n", 1)[-1])
        if seq is None:
            raise ExportError(f"{output} does not end with an exported record; "
                              "refusing to guess where to go on")
        return seq + 1
    finally:
        os.close(fd)


class Exporter:
    """Writes records of one chain from `start` on; `follow` keeps going as the log grows."""

    def __init__(self, live: Path, fmt: str, sink: IO[bytes], start: int) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}")
        self._live, self._fmt, self._sink = live, fmt, sink
        self.next_seq = start
        self._tail = ChainTail(live)

    def run_once(self) -> int:
        """Export what the log holds now; returns the number of records written."""
        written, batch = 0, bytearray()
        for record in self._tail.new_records():
            if record["seq"] < self.next_seq:
                continue
            if record["seq"] != self.next_seq:
                # A gap: a rotation during the read (read the chain again next time), or records
                # removed (then this stops here every time rather than skip; verify says why).
                self._tail.reread()
                break
            batch += render(record, self._fmt)
            self.next_seq += 1
            written += 1
            if written % BATCH == 0:
                self._flush(batch)
        self._flush(batch)
        return written

    def follow(self, interval: float, stop: Callable[[], bool] = lambda: False) -> None:
        while not stop():
            if self.run_once() == 0:
                time.sleep(interval)

    def _flush(self, batch: bytearray) -> None:
        if batch:
            self._sink.write(bytes(batch))
            self._sink.flush()
            batch.clear()
