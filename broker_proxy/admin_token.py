"""The admin token: the bearer secret of the admin API, and its break-glass once people sign in.

Made on first use, 0600, and refused when others can read it: whoever reads it can issue grants,
the same rule ssh applies to its keys. Kept apart from the HTTP handler, which only compares it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from broker_proxy.errors import BrokerError

TOKEN_PREFIX = "bpa_"


class AdminApiError(BrokerError):
    """The admin API cannot start; the message is one line for the operator."""


class AdminTokenError(AdminApiError):
    """The admin token file cannot be created or is not private."""


def load_or_create_admin_token(path: Path) -> str:
    """Read the token, creating it 0600 on first use; refuse one that others can read."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise AdminTokenError(f"cannot create admin token {path}: {error.strerror}") from None
    else:
        with os.fdopen(fd, "w") as file:
            file.write(TOKEN_PREFIX + secrets.token_urlsafe(32) + "\n")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd) as file:
            if os.fstat(file.fileno()).st_mode & 0o077:
                # Whoever can read it can issue grants: the same rule ssh applies to its keys.
                raise AdminTokenError(f"admin token {path} is readable by others; chmod 600 it")
            token = file.read().strip()
    except OSError as error:
        raise AdminTokenError(f"cannot read admin token {path}: {error.strerror}") from None
    if len(token) < 32:
        raise AdminTokenError(f"admin token {path} is too short; delete it to make a new one")
    return token
