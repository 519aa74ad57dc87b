"""The audit key: 32 random bytes in a 0600 file of the home, created once, by link().

Anyone who can read the key can forge records that verify, so a key readable by others is
refused rather than used.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from broker_proxy.audit.errors import AuditKeyError

KEY_BYTES: Final = 32


def load_key(key_path: Path, *, create: bool) -> bytes:
    """Read the 32-byte audit key, creating it (0600) first when `create` and it is missing."""
    if create:
        _create_key(key_path)
    try:
        fd = os.open(key_path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise AuditKeyError(f"audit key {key_path} does not exist") from None
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {key_path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        # Anyone who can read the key can forge records that verify; anyone who can write it can
        # make every record fail.
        if info.st_mode & 0o077:
            raise AuditKeyError(
                f"audit key {key_path} is accessible by group or others (run chmod 600)"
            )
        if not stat.S_ISREG(info.st_mode):
            raise AuditKeyError(f"audit key {key_path} is not a regular file")
        key = os.read(fd, KEY_BYTES + 1)
    except OSError as exc:
        raise AuditKeyError(f"cannot read audit key {key_path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise AuditKeyError(f"audit key {key_path} must be exactly {KEY_BYTES} bytes")
    return key


def _create_key(key_path: Path) -> None:
    """Write a fresh key beside the target, then link it into place.

    link() fails if the name exists, so two processes creating the key at once both end up
    reading the same complete key, never a half-written one.
    """
    if key_path.exists():
        return
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        with contextlib.suppress(FileExistsError):
            os.link(tmp, key_path)
    except OSError as exc:
        raise AuditKeyError(f"cannot create audit key {key_path}: {exc.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
