"""Reading audit records for reports and exports: streamed, one line at a time, never a whole file.

A report may cover one chain (a live file and its rotated archives), a directory holding one
chain per replica, or several paths given at once. Records of several chains are merged by time
(each chain is in time order already), so a grant used through two replicas reads as one story.
Each record is tagged with the chain it came from (`_log`), which is how a report names the
records behind a finding: `audit.log#42`.
"""

from __future__ import annotations

import heapq
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from broker_proxy.audit.files import chain_files, chains_in

LOG_TAG = "_log"  # added by the reader, never written to the log
# Lines are ASCII (the writer escapes everything else): decode them directly, without
# json.loads's per-call encoding detection, which is a tenth of a report's time.
_decode = json.JSONDecoder().decode


def chains_of(paths: Iterable[Path]) -> list[Path]:
    """The live file of every chain named by `paths` (a log file, or a directory of logs)."""
    lives: list[Path] = []
    for path in paths:
        path = Path(path)
        lives += chains_in(path) if path.is_dir() else [path]
    return lives


def read_chain(live: Path, *, tag: str | None = None,
               tagged: bool = True) -> Iterator[dict[str, Any]]:
    """Every record of one chain in chain order; torn or foreign lines are skipped.

    `audit verify` and the integrity statement name those; a report only counts records.
    """
    name = tag if tag is not None else live.name
    for file in chain_files(live):
        try:
            handle = open(file, "rb")  # noqa: SIM115 (closed in finally, generator-friendly)
        except FileNotFoundError:
            continue  # rotated away while we read; the integrity statement reports the gap
        try:
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # a torn tail: not a record (yet)
                try:
                    record = _decode(line.decode("utf-8"))
                except ValueError:  # also UnicodeDecodeError: not a line the writer wrote
                    continue
                if isinstance(record, dict) and type(record.get("seq")) is int:
                    if tagged:
                        record[LOG_TAG] = name
                    yield record
        finally:
            handle.close()


def read_merged(lives: list[Path]) -> Iterator[dict[str, Any]]:
    """Records of all chains, merged by timestamp (then chain, then seq) in bounded memory."""
    if len(lives) == 1:
        yield from read_chain(lives[0])
        return
    names = _distinct_names(lives)
    streams = [read_chain(live, tag=name) for live, name in zip(lives, names, strict=True)]
    yield from heapq.merge(*streams, key=lambda r: (str(r.get("ts", "")), r[LOG_TAG], r["seq"]))


def _distinct_names(lives: list[Path]) -> list[str]:
    """Chain names as short as they can be while telling chains apart (replicas share names)."""
    names = [live.name for live in lives]
    if len(set(names)) == len(names):
        return names
    return [str(live) for live in lives]


class ChainTail:
    """Reads a chain's new records as it grows, across rotations, for exporters that follow it.

    It remembers the live file (device, inode) and how far it read; while the name still points
    at that file it reads on from there, and after a rotation it reads the whole chain again
    (the caller skips the seqs it has), so nothing is missed however many rotations happened.
    """

    def __init__(self, live: Path) -> None:
        self._live = live
        self._held: tuple[int, int, int] | None = None  # live file (dev, ino) and offset read

    def new_records(self) -> Iterator[dict[str, Any]]:
        if self._held is not None:
            try:
                info = os.stat(self._live)
            except OSError:
                return  # momentarily gone (a rotation renames over it): look again later
            if (info.st_dev, info.st_ino) == self._held[:2]:
                yield from self._read_live(self._held[2])
                return
        for file in chain_files(self._live):
            if file == self._live:
                yield from self._read_live(0)
            else:
                yield from read_chain(file, tag=self._live.name)

    def reread(self) -> None:
        """Start again from the chain's first file on the next read.

        For a caller that met a gap: a rotation that happened while the whole chain was being
        read makes the live name point at a newer file than the list of files taken before it,
        so the records of the file rotated away in between were not read yet. Reading on from
        the remembered offset would never return to them.
        """
        self._held = None

    @property
    def reads_whole_chain(self) -> bool:
        """Whether the next read starts from the chain's first file (a gap there is real)."""
        return self._held is None

    def _read_live(self, offset: int) -> Iterator[dict[str, Any]]:
        try:
            handle = open(self._live, "rb")  # noqa: SIM115 (closed in finally)
        except FileNotFoundError:
            return
        try:
            info = os.fstat(handle.fileno())
            handle.seek(offset)
            for line in handle:
                if not line.endswith(b"\n"):
                    break  # being written: read it whole next time
                offset += len(line)
                self._held = (info.st_dev, info.st_ino, offset)
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and type(record.get("seq")) is int:
                    record[LOG_TAG] = self._live.name
                    yield record
            self._held = (info.st_dev, info.st_ino, offset)
        finally:
            handle.close()
