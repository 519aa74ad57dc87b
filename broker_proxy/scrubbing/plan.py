"""A secret value's compiled patterns, and the search plan over a set of values.

Compiling a value costs tens of ms and a plan's Hyperscan database about 1 ms per value, so
both are cached: a value's patterns are shared by every grant holding it, and a plan by every
scrubber searching the same values (each with its own placeholders).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping

import regex

from broker_proxy.scrubbing.forms import (
    _AT_START,
    _Matcher,
    _matchers_of,
    _max_match_length,
    _min_width,
)
from broker_proxy.scrubbing.literal_search import Literal, LiteralSearch


def _starts_of(partial: regex.Pattern[bytes]) -> frozenset[bytes]:
    """Every one, two and three bytes a match of ``partial`` may begin with.

    Found by asking ``partial`` itself, so the answer is exact: a stream's tail is tried as
    the start of a secret only where its first bytes say it could be one. Only bytes the
    pattern spells (a byte a match holds is written in the pattern, escaped or in a class;
    NUL, tab and line breaks are written as escapes) are probed.
    """
    alphabet = [bytes([b]) for b in sorted(set(partial.pattern) | {0, 9, 10, 13})]
    starts: set[bytes] = set()
    level = [b""]
    for _ in range(3):
        level = [head + byte for head in level for byte in alphabet
                 if partial.match(head + byte, partial=True)]
        starts.update(level)
    return frozenset(starts)


class _Compiled:
    """The patterns of one secret value, without its placeholder.

    Building them costs 40-60 ms of CPU. They depend only on the value, so every grant holding
    the secret (each with its own placeholder) shares them, and a secret is compiled once per
    value for the life of the process, not per grant. The patterns spell the value out: the
    repr counts them.
    """

    __slots__ = ("matchers", "max_match_length", "min_match_length", "partial", "raw_length",
                 "starts")

    def __init__(self, name: str, raw: bytes) -> None:
        self.matchers = tuple(_matchers_of(name, raw))
        self.max_match_length = _max_match_length(raw)
        self.raw_length = len(raw)
        self.min_match_length = min(_min_width(pattern) for m in self.matchers
                                    for pattern in (m.full, m.search.pattern))
        self.partial = regex.compile(b"|".join(b"(?:" + m.full + b")" for m in self.matchers))
        self.starts = _starts_of(self.partial)

    def __repr__(self) -> str:
        return f"<_Compiled {len(self.matchers)} patterns>"


class _CompiledCache:
    """A small LRU of compiled values, shared by the event loop and the decision threads.

    Keys are keyed digests under a key drawn at start-up, so a key (in a debugger, a traceback,
    a heap dump) says nothing about a value, not even to someone who guesses it.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._salt = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self._entries: OrderedDict[bytes, _Compiled] = OrderedDict()
        self.builds = 0  # how many values were compiled (the costly part), for tests

    def get(self, name: str, raw: bytes) -> _Compiled:
        key = hmac.new(self._salt, name.encode() + b"\0" + raw, hashlib.sha256).digest()
        with self._lock:
            compiled = self._entries.get(key)
            if compiled is not None:
                self._entries.move_to_end(key)
                return compiled
        compiled = _Compiled(name, raw)  # outside the lock: a build blocks no other lookup
        with self._lock:
            self.builds += 1
            self._entries[key] = compiled
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return compiled

    def __repr__(self) -> str:
        return f"<_CompiledCache {len(self._entries)} values>"


_COMPILED = _CompiledCache(1024)


def _trie(strings: list[bytes], depth: int) -> bytes:
    """One ``re`` alternation for the rest of three-byte starts after ``depth`` bytes, shared
    prefixes factored out (a byte trie). A start that is shorter than three bytes is one only
    where the data ends: its empty rest is spelled ``\\Z``.
    """
    if depth == 3:
        return b""
    branches: dict[int, list[bytes]] = {}
    ends = False
    for string in strings:
        if string:
            branches.setdefault(string[0], []).append(string[1:])
        else:
            ends = True
    parts = [re.escape(bytes([first])) + _trie(sorted(rests), depth + 1)
             for first, rests in sorted(branches.items())]
    if ends:
        parts.append(rb"\Z")
    return parts[0] if len(parts) == 1 else b"(?:" + b"|".join(parts) + b")"


def _tail_starts_pattern(starts: Mapping[bytes, object]) -> re.Pattern[bytes] | None:
    """Where in a stream's tail a form can begin: a key of ``starts`` at that position (its
    three bytes, or the last one or two bytes of the data).

    Each match is the first byte, the rest a lookahead, so ``finditer`` reports every such
    position, overlapping ones too, in one pass in C (``re`` skips bytes that begin no key
    without entering the pattern); the tail is no longer walked byte by byte in Python.
    """
    branches: dict[int, list[bytes]] = {}
    for start in starts:
        # A key shorter than three bytes is a start only where the data ends.
        branches.setdefault(start[0], []).append(start[1:])
    if not branches:
        return None
    parts = [re.escape(bytes([first])) + b"(?=" + _trie(sorted(rests), 1) + b")"
             for first, rests in sorted(branches.items())]
    return re.compile(b"(?:" + b"|".join(parts) + b")")


_HEX_AND_SEPARATORS = re.compile(rb"[0-9A-Fa-f :\-]{12}\Z")


def _may_end_a_long_form(data: bytes) -> bool:
    """Could ``data`` end with a partial match longer than ``plain_match_length`` (>= 14)?

    Such a match is one of the long forms, and its last 14 bytes show it: UTF-32 has a NUL in
    every character; text cut into lines that narrow has a line break at least every 15
    bytes (three characters of up to four bytes, and the break); hex with separators is
    nothing but hex digits and separators. Cheaper than a pattern (a few C calls).
    """
    tail = data[-16:]
    return (0 in tail or 10 in tail  # NUL or LF: an int is found faster than bytes
            or _HEX_AND_SEPARATORS.match(data, max(0, len(data) - 12)) is not None)


class _Plan:
    """The search over a set of values: one literal pass, then patterns only near its hits.

    Building it compiles a Hyperscan database (about 1 ms per value), so scrubbers holding the
    same values (grants of one policy entry, each with its own placeholders) share one.
    """

    __slots__ = ("anchors", "literals", "literals_on_one_line", "long_match_length",
                 "max_match_length", "plain_match_length", "starts", "tail_starts")

    def __init__(self, compiled: tuple[_Compiled, ...]) -> None:
        self.anchors: list[tuple[_Matcher, str, int]] = []
        shared: dict[tuple[int, str, int], tuple[_Matcher, str, int]] = {}
        literals: list[Literal] = []
        for part in compiled:
            for matcher in part.matchers:
                for literal, kind in matcher.anchors():
                    entry = (matcher, kind, len(literal.data))
                    # Hundreds of base64 anchors share a few entries: a plan stays small.
                    self.anchors.append(shared.setdefault((id(matcher), kind, entry[2]), entry))
                    literals.append(literal)
        self.literals = LiteralSearch(literals)
        # Most literals are a base64 core cut by a line break (hundreds per value, short, so
        # the costliest part of the scan); none of them can be in data without a line break,
        # which many bodies are (compact JSON, one-line text). Same hits, a smaller set.
        one_line = [index for index, literal in enumerate(literals) if b"\n" not in literal.data]
        self.literals_on_one_line = self.literals if len(one_line) == len(literals) else (
            LiteralSearch([literals[index] for index in one_line], ids=one_line))
        self.max_match_length = max((part.max_match_length for part in compiled), default=0)
        # Without an escape a match is short: hex and UTF-16 take twice the value's bytes,
        # base64 its core plus edges and padding, and a line break at most every two
        # characters of the core (lines narrower than that are not looked for).
        self.plain_match_length = max(
            [2 * part.raw_length + 6 for part in compiled]
            + [2 * length + 12 for matcher, kind, length in self.anchors
               if kind == _AT_START and matcher.form.kind == "base64"],
            default=0)
        # Longer without an escape: hex with separators (three times the bytes), UTF-32 and
        # text cut into narrow lines (up to four). Such a match longer than the plain length
        # shows in its last bytes (``_may_end_a_long_form``).
        self.long_match_length = max([4 * part.raw_length + 6 for part in compiled], default=0)
        starts: dict[bytes, list[regex.Pattern[bytes]]] = {}
        for part in compiled:
            for start in part.starts:
                starts.setdefault(start, []).append(part.partial)
        self.starts = {k: tuple(v) for k, v in starts.items()}
        self.tail_starts = _tail_starts_pattern(self.starts)

    def __repr__(self) -> str:
        return f"<_Plan {len(self.anchors)} anchors>"


class _PlanCache:
    """A small LRU of plans by the values they search (the compiled objects themselves)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[_Compiled, ...], _Plan] = OrderedDict()

    def get(self, compiled: tuple[_Compiled, ...]) -> _Plan:
        with self._lock:
            plan = self._entries.get(compiled)
            if plan is not None:
                self._entries.move_to_end(compiled)
                return plan
        plan = _Plan(compiled)
        with self._lock:
            self._entries[compiled] = plan
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return plan

    def __repr__(self) -> str:
        return f"<_PlanCache {len(self._entries)} plans>"


