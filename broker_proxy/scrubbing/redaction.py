"""Whole-value scrubbing, kept for callers that hold a complete value (headers, short bodies).

The forms found and what replaces them are described in ``scrubber``; this is its one-shot face.
"""

from __future__ import annotations

from collections.abc import Mapping

from broker_proxy.scrubbing.scrubber import Scrubber


class Redactor:
    """Built per flow from the secrets that flow carried."""

    def __init__(self, scrub: Mapping[str, tuple[str, str]]) -> None:
        """``scrub`` maps secret name -> (value, placeholder)."""
        self._scrubber = Scrubber(scrub)

    def scrub(self, data: bytes) -> tuple[bytes, dict[str, int]]:
        return self._scrubber.scrub(data)

    def scrub_text(self, text: str) -> tuple[str, dict[str, int]]:
        data, counts = self.scrub(text.encode("utf-8", "surrogateescape"))
        return data.decode("utf-8", "surrogateescape"), counts
