"""Which broker replica this is: the name every audit record of its chain carries.

Several replicas share one grant store but each writes its own audit chain, so a record has to
say which replica decided. The default id is made once per home and kept there, so a replica
restarted from the same home keeps its name and its chain stays recognisable.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket

from broker_proxy.errors import BrokerError
from broker_proxy.home import Home

REPLICA_ID_FILE = "replica.id"
_REPLICA_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", re.ASCII)


class ReplicaIdError(BrokerError, ValueError):
    """A replica id that cannot name a chain (empty, too long, odd characters)."""


def check_replica_id(text: str) -> str:
    if not _REPLICA_ID_RE.fullmatch(text):
        raise ReplicaIdError(
            "replica id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit"
        )
    return text


def replica_id(home: Home, explicit: str | None) -> str:
    """--replica-id, else the id kept in <home>/replica.id, made as HOSTNAME-RANDOM once."""
    if explicit is not None:
        return check_replica_id(explicit)
    path = home.root / REPLICA_ID_FILE
    try:
        return check_replica_id(path.read_text().strip())
    except FileNotFoundError:
        pass
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:48].strip(".-") or "broker"
    made = f"{host}-{secrets.token_hex(3)}"
    home.ensure()
    # Written beside the target and linked into place: link() fails if the name exists, so
    # two replicas starting from one home at once both read the one complete id.
    tmp = path.with_name(f".{REPLICA_ID_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        tmp.write_text(made + "\n")
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return check_replica_id(path.read_text().strip())
