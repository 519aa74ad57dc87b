"""A fresh vault master key per test: test secrets are random per run, keys too."""

from __future__ import annotations

import base64
import secrets


def random_master_key() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
