"""A keyring backend on one JSON file, for tests of the ``keyring:SERVICE/USER`` source.

Selected in a proxy process with ``PYTHON_KEYRING_BACKEND=tests.file_keyring.FileKeyring``
(and the checkout on PYTHONPATH); the file is ``$BP_TEST_KEYRING_FILE``. Never the developer's
real keychain.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from keyring.backend import KeyringBackend
from keyring.errors import PasswordDeleteError

FILE_VARIABLE = "BP_TEST_KEYRING_FILE"


class FileKeyring(KeyringBackend):
    priority = 1  # type: ignore[assignment]  # > 0: usable_keyring() accepts it

    def _path(self) -> Path:
        return Path(os.environ[FILE_VARIABLE])

    def _entries(self) -> dict[str, str]:
        path = self._path()
        return json.loads(path.read_text()) if path.exists() else {}

    def get_password(self, service: str, username: str) -> str | None:
        return self._entries().get(f"{service}/{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        entries = self._entries()
        entries[f"{service}/{username}"] = password
        self._path().write_text(json.dumps(entries))

    def delete_password(self, service: str, username: str) -> None:
        entries = self._entries()
        if entries.pop(f"{service}/{username}", None) is None:
            raise PasswordDeleteError(f"{service}/{username}")
        self._path().write_text(json.dumps(entries))
