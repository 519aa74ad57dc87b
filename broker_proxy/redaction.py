"""Scrubbing injected secret values out of what the upstream sends back.

An API that echoes its input (debug endpoints, error messages quoting the request) would hand
the real value to the agent. Every form listed in ``_encodings`` is replaced by the placeholder
the agent used, so the agent sees only what it sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Mapping
from urllib.parse import quote


def _encodings(value: bytes) -> Iterator[bytes]:
    yield value
    yield quote(value, safe="").encode()
    yield json.dumps(value.decode("utf-8", "replace"))[1:-1].encode()
    yield base64.b64encode(value)
    yield base64.b64encode(value).rstrip(b"=")
    yield base64.urlsafe_b64encode(value).rstrip(b"=")
    yield value.hex().encode()
    yield value.hex().upper().encode()


class Redactor:
    """Built per flow from the secrets that flow carried."""

    def __init__(self, scrub: Mapping[str, tuple[str, str]]) -> None:
        """``scrub`` maps secret name -> (value, placeholder)."""
        forms: list[tuple[bytes, bytes, str]] = []
        for name, (value, placeholder) in scrub.items():
            for form in dict.fromkeys(_encodings(value.encode())):
                if len(form) >= 4:  # too short a form would scrub random bytes
                    forms.append((form, placeholder.encode(), name))
        # Longest first: a raw value contained in a longer encoded form must not split it.
        self._forms = sorted(forms, key=lambda f: len(f[0]), reverse=True)

    def scrub(self, data: bytes) -> tuple[bytes, dict[str, int]]:
        counts: dict[str, int] = {}
        for form, placeholder, name in self._forms:
            if form in data:
                counts[name] = counts.get(name, 0) + data.count(form)
                data = data.replace(form, placeholder)
        return data, counts

    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]:
        data, counts = self.scrub(text.encode("utf-8", "surrogateescape"))
        return data.decode("utf-8", "surrogateescape"), counts
