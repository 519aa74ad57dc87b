"""Which files make up an audit chain: the rotated archives, oldest first, then the live file.

A chain is named by its live file (`audit.log`); its archives are `audit.log.000001`, ... in a
directory next to it. A directory may hold several chains (one per replica), one per `*.log`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

ARCHIVE_DIGITS: Final = 6  # audit.log.000001, audit.log.000002, ... (sorted by number, not text)


def _archive_pattern(live: Path) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(live.name)}\.(\d{{{ARCHIVE_DIGITS},}})$")


def archives_of(live: Path) -> list[Path]:
    """The rotated files of the chain whose live file is `live`, oldest first."""
    pattern = _archive_pattern(live)
    try:
        names = os.listdir(live.parent)
    except FileNotFoundError:
        return []
    found = [(int(match.group(1)), name) for name in names if (match := pattern.match(name))]
    return [live.parent / name for _index, name in sorted(found)]


def next_archive(live: Path) -> Path:
    archives = archives_of(live)
    index = int(archives[-1].name.rsplit(".", 1)[1]) + 1 if archives else 1
    return live.with_name(f"{live.name}.{index:0{ARCHIVE_DIGITS}d}")


def chain_files(live: Path) -> list[Path]:
    """Every file of one chain in chain order.

    An archive that is the live file under a second name is a rotation cut short by a crash
    (see ChainFile.rotate): it holds nothing the live file does not, so it is skipped.
    """
    archives = archives_of(live)
    if archives and live.exists():
        try:
            if os.path.samefile(archives[-1], live):
                archives.pop()
        except OSError:
            pass
    return [*archives, live] if live.exists() else archives


def chains_in(directory: Path) -> list[Path]:
    """The live file of every chain in a directory (`*.log`, also when only archives remain)."""
    lives: set[str] = set()
    for entry in os.listdir(directory):
        base = re.sub(rf"\.\d{{{ARCHIVE_DIGITS},}}$", "", entry)
        if base.endswith(".log") and (directory / entry).is_file():
            lives.add(base)
    return [directory / name for name in sorted(lives)]
