"""Finding an injected secret in what comes back, in every form an upstream may echo it.

An API that reflects its input (debug endpoints, error messages quoting the request, a stored
gist) would hand the real value to the agent. Each secret is compiled into a few patterns, one
per family of encodings, and every match is replaced by the placeholder *in the same encoding*,
so that what the agent receives stays well-formed (a base64 blob still decodes, a JSON string
stays a JSON string) and reads as exactly what the agent sent.

Forms found, and what replaces them:

* text: the raw bytes, where any character may instead be percent-encoded (``%2F``/``%2f``,
  ``+`` for a space), JSON-escaped (``\\u002f``, ``\\/``, ``\\"``, ...), an HTML character
  reference (``&#47;``, ``&#x2F;``, ``&sol;``) or quoted-printable (``=2F``), in any mix, and
  may be cut into lines (LF, CRLF, or a quoted-printable soft break, lines three characters
  wide or more) between two characters
  (``encodings``). Replaced by the raw placeholder; by its percent-encoding when the match holds
  a ``%``; by its JSON escaping when the match holds a backslash; HTML-escaped when it holds a
  ``&``; quoted-printable when it holds ``=XX`` or a soft break.
* hex, either case (replaced by the placeholder's hex, upper case when the match had upper case);
  also with a space, colon or dash between bytes (replaced with the same separator).
* UTF-16 and UTF-32, little and big endian (replaced by the placeholder in the same encoding).
* base32 (RFC 4648, upper case) where the value starts the blob (replaced on bits, as base64).
* base64, standard and URL-safe, with or without padding, wrapped with LF or CRLF at any width
  of two characters or more,
  and at any of the three byte offsets inside a larger blob. A secret at offset 1 or 2 of a
  blob shares its first and last base64 characters with its neighbours; those edge characters
  are matched by the set of characters that carry the secret's known bits, so no bit of the
  secret survives. The replacement is computed on bits: the neighbours' bits in the edge
  characters are kept and the placeholder's bytes are put where the secret's were. Unless the
  match ends the blob (``=`` padding), up to two spaces follow the placeholder so its length
  equals the secret's modulo 3: the rest of the blob then decodes unchanged. Line breaks inside
  a match are dropped. URL-safe output is used when the match holds ``-`` or ``_``, or
  is unpadded and holds neither ``+`` nor ``/`` (JWT-style); else standard.

Speed: every form that is not escaped or line-wrapped is a fixed string, so one multi-literal
pass (``literal_search``, Hyperscan) finds where a match can be, and the patterns run only
there: at a hit, around a hit for line-wrapped base64 (a literal spans its first line break,
for lines two or more characters wide), and around a percent or JSON escape of one of the
value's characters for the text form's escaped spellings. A body unlike any secret is read
once, at memory speed.

Streaming: ``StreamScrubber.feed`` returns every byte that can no longer be the start of a
match, and holds back only a suffix that is a *partial* match (found with the ``regex``
module's partial matching, tried only where the tail's first two bytes can begin a form, and
over the unescaped length of a form unless the tail holds an escape of a secret's character).
A secret split across chunks is found, memory is bounded by the longest possible match, and a stream
that does not look like a secret (server-sent events, heartbeats) is never delayed.

Not found: a secret shorter than ``MIN_SECRET_LENGTH`` bytes (it would match unrelated bytes all
over a response), encodings not listed here (compression is undone before scrubbing, see
``content_decoding`` and ``nested_bodies``; ``docs/scrubbing-forms.md`` lists what is out of
reach and why), and transformations an adversarial upstream could invent (an upstream
that wants to leak a value it received can always do so; this guards against echoes).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

import regex

from broker_proxy.scrubbing import encodings
from broker_proxy.scrubbing.literal_search import Literal, LiteralSearch

MIN_SECRET_LENGTH = 4
# What a literal hit means: the match is the literal; the pattern matches from the literal's
# start (base64: edge characters and padding around a fixed core); the pattern runs around it;
# an escape of one of the value's characters, so the text form's pattern runs around it; a
# line break inside the value, so the text form's pattern runs close around it (a match
# without an escape is at most ``long_match_length`` long; one with an escape is found from
# the escape).
_EXACT, _AT_START, _AROUND, _ESCAPE, _LINES = "exact", "at-start", "around", "escape", "lines"
_B64_STD = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_URL = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_LINE_BREAK = rb"(?:\r?\n)?"
_JSON_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\f": "\\f",
                       "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _literal(data: bytes) -> bytes:
    return regex.escape(data)


def _hex_pattern(data: bytes) -> bytes:
    """Hex digits of ``data`` with letters in either case."""
    out = []
    for digit in data.hex():
        out.append(f"[{digit}{digit.upper()}]" if digit.isalpha() else digit)
    return "".join(out).encode()


def _text_char_pattern(char: str) -> bytes:
    """One character, raw, percent-encoded, JSON-escaped, an HTML reference or QP."""
    encoded = char.encode("utf-8", "surrogateescape")
    options = [_literal(encoded), b"".join(b"%" + _hex_pattern(bytes([b])) for b in encoded)]
    if char == " ":
        options.append(rb"\+")
    options.extend(encodings.extra_char_options(char))
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte: no JSON escape exists for it
        return b"(?:" + b"|".join(options) + b")"
    if code > 0xFFFF:  # JSON spells it as a UTF-16 surrogate pair
        high, low = divmod(code - 0x10000, 0x400)
        units = [0xD800 + high, 0xDC00 + low]
    else:
        units = [code]
    options.append(b"".join(rb"\\u" + _hex_pattern(unit.to_bytes(2, "big")) for unit in units))
    if char in _JSON_SHORT_ESCAPES:
        options.append(_literal(_JSON_SHORT_ESCAPES[char].encode()))
    return b"(?:" + b"|".join(options) + b")"


def _escape_literals(text: str) -> list[Literal]:
    """Every percent, JSON, HTML or quoted-printable escape of a character of ``text``.

    A spelling of the value other than the raw one holds at least one of them, so the text
    pattern runs only near one: an escape of a character no secret holds (``\\n``, ``%20`` in
    most bodies) costs nothing.
    """
    literals: set[Literal] = set()
    for char in set(text):
        encoded = char.encode("utf-8", "surrogateescape")
        literals.update(Literal(b"%%%02x" % b, caseless=True) for b in encoded)
        if char == " ":
            literals.add(Literal(b"+"))
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:
            continue  # an undecodable byte: no JSON escape exists for it
        if code > 0xFFFF:
            high, low = divmod(code - 0x10000, 0x400)
            units = [0xD800 + high, 0xDC00 + low]
        else:
            units = [code]
        # Caseless also folds the "u": a few more hits, never one less.
        literals.add(Literal(b"".join(b"\\u%04x" % unit for unit in units), caseless=True))
        if char in _JSON_SHORT_ESCAPES:
            literals.add(Literal(_JSON_SHORT_ESCAPES[char].encode()))
    literals.update(Literal(data, caseless=caseless)
                    for data, caseless in encodings.extra_escape_literals(text))
    return sorted(literals, key=lambda lit: (lit.data, lit.caseless))


def _b64_class(alphabet: bytes, values: list[int]) -> bytes:
    chars = sorted({alphabet[v] for v in values})
    return b"[" + b"".join(_literal(bytes([c])) for c in chars) + b"]"


@dataclass(frozen=True, slots=True)
class _Base64Shape:
    offset: int  # the secret's byte offset modulo 3 inside the blob
    length: int  # the secret's length in bytes


def _base64_pattern(value: bytes, offset: int,
                    alphabet: bytes) -> tuple[bytes, bytes, frozenset[int], bytes] | None:
    """The base64 characters that can only come from ``value`` at ``offset`` (mod 3).

    Returns the whole pattern, the same without its leading edge character (a literal first
    character lets ``re`` search fast), the set of bytes that edge character may be, and the
    characters every match holds in order (line breaks aside), for the literal prefilter.
    """
    n = len(value)
    encoded = base64.b64encode(b"\0" * offset + value).rstrip(b"=")
    encoded = encoded.translate(bytes.maketrans(_B64_STD, alphabet))
    stable_start = {0: 0, 1: 2, 2: 3}[offset]
    trailing = (offset + n) % 3
    stable_end = len(encoded) - (1 if trailing else 0)
    core = encoded[stable_start:stable_end]
    if len(core) < MIN_SECRET_LENGTH:
        return None
    first, last = value[0], value[-1]
    lead: list[int] = []
    if offset == 1:  # 2 bits of the neighbour, then the first byte's high 4 bits
        lead = [alphabet[(p << 4) | (first >> 4)] for p in range(4)]
    elif offset == 2:  # 4 bits of the neighbour, then the first byte's high 2 bits
        lead = [alphabet[(p << 2) | (first >> 6)] for p in range(16)]
    parts = [_literal(bytes([c])) for c in core]
    if trailing == 1:  # the last byte's low 2 bits, then 4 bits of what follows
        parts.append(_b64_class(alphabet, [((last & 3) << 4) | q for q in range(16)]))
    elif trailing == 2:  # the last byte's low 4 bits, then 2 bits of what follows
        parts.append(_b64_class(alphabet, [((last & 15) << 2) | q for q in range(4)]))
    core_first = _LINE_BREAK.join(parts)
    if trailing:
        core_first += b"(?:" + _LINE_BREAK + b"={1,2})?"
    if not lead:
        return core_first, core_first, frozenset(), core
    lead_class = b"[" + b"".join(_literal(bytes([c])) for c in sorted(set(lead))) + b"]"
    return lead_class + _LINE_BREAK + core_first, core_first, frozenset(lead), core


def _base64_replacement(matched: bytes, shape: _Base64Shape, placeholder: bytes) -> bytes:
    """Re-encode the matched characters with the placeholder's bytes in the secret's place."""
    padded = b"=" in matched
    text = matched.replace(b"\r", b"").replace(b"\n", b"").rstrip(b"=")
    urlsafe = (b"-" in text or b"_" in text) or (
        not padded and b"+" not in text and b"/" not in text)
    alphabet = _B64_URL if urlsafe else _B64_STD
    lookup = {c: i for i, c in enumerate(alphabet)}
    bits = 0
    for char in text:
        bits = (bits << 6) | lookup[char]
    total = 6 * len(text)
    lead = {0: 0, 1: 2, 2: 4}[shape.offset]
    tail = total - lead - 8 * shape.length
    lead_bits = bits >> (total - lead)
    tail_bits = bits & ((1 << tail) - 1)
    if not padded:
        # More of the blob may follow: spaces after the placeholder keep its length equal to
        # the secret's modulo 3, so every later character of the blob still decodes the same.
        placeholder += b" " * ((shape.length - len(placeholder)) % 3)
    new_bits = (lead_bits << (8 * len(placeholder))) | int.from_bytes(placeholder, "big")
    new_total = lead + 8 * len(placeholder)
    if not padded:  # the next byte's first bits (or the zero fill at the blob's end)
        new_bits, new_total = (new_bits << tail) | tail_bits, new_total + tail
    fill = -new_total % 6
    new_bits, new_total = new_bits << fill, new_total + fill
    out = bytes(alphabet[(new_bits >> (new_total - 6 * (i + 1))) & 63]
                for i in range(new_total // 6))
    if padded:
        out += b"=" * (-(shape.offset + len(out)) % 4)
    return out


@dataclass(frozen=True, slots=True)
class _Form:
    """One encoding family of one secret. The placeholder is not here: the compiled patterns
    depend only on the value, so grants with their own placeholders share them."""

    secret: str
    # "text" | "hex" | "hex-space" | "hex-colon" | "hex-dash" | "utf-16-le" | "utf-16-be"
    # | "utf-32-le" | "utf-32-be" | "base64" | "base32"
    kind: str
    base64_shape: _Base64Shape | None = None  # base64 and base32: offset and length

    def replacement(self, matched: bytes, placeholder: bytes) -> bytes:
        if self.kind == "text":
            if b"\\" in matched:  # JSON context: the placeholder must stay a valid string
                return json.dumps(placeholder.decode("utf-8", "replace"))[1:-1].encode()
            if b"%" in matched:
                return quote(placeholder, safe="").encode()
            if b"&" in matched:  # HTML: a reference where the placeholder needs one
                return encodings.html_replacement(placeholder)
            if b"=" in matched and encodings.is_quoted_printable(matched):
                return encodings.quoted_printable_replacement(placeholder)
            return placeholder  # line breaks inside the match are dropped with it
        if self.kind == "hex":
            upper = any(c in b"ABCDEF" for c in matched)
            encoded = placeholder.hex()
            return (encoded.upper() if upper else encoded).encode()
        if self.kind in encodings.HEX_SEPARATORS:
            return encodings.separated_hex_replacement(
                matched, encodings.HEX_SEPARATORS[self.kind], placeholder)
        if self.kind.startswith(("utf-16", "utf-32")):
            return placeholder.decode("utf-8", "replace").encode(self.kind)
        assert self.base64_shape is not None
        if self.kind == "base32":
            return encodings.base32_replacement(matched, self.base64_shape.offset,
                                                self.base64_shape.length, placeholder)
        return _base64_replacement(matched, self.base64_shape, placeholder)


@dataclass(frozen=True, slots=True, repr=False)
class _Matcher:
    """One form's patterns: ``search`` finds complete matches fast with ``re``.

    The patterns spell the secret out, so the repr names the form only.
    """

    form: _Form
    full: bytes  # the whole pattern, for partial matching at a stream's end
    search: re.Pattern[bytes]  # starts with a literal where possible, so ``re`` scans fast
    lead: frozenset[int] = frozenset()  # base64 edge character before ``search``'s match
    # Makes the fixed strings every match (of the kinds that matter) holds, and says what a
    # hit means. A function (a closure: its repr names no value), not a tuple: a plan needs
    # them once, a cached value never.
    anchors: Callable[[], list[tuple[Literal, str]]] = list

    def __repr__(self) -> str:
        return f"<_Matcher {self.form.secret} {self.form.kind}>"


def _matchers_of(name: str, value: bytes) -> list[_Matcher]:
    text = value.decode("utf-8", "surrogateescape")
    # Between two characters a line break may cut the value (lines, quoted-printable).
    text_pattern = encodings.LINE_BREAK_BETWEEN.join(_text_char_pattern(c) for c in text)
    # The raw text is a literal; its escaped spellings are searched near an escape only, and
    # its raw spellings cut into lines near a line break between two of its characters, with
    # a pattern of raw characters only (it starts with a literal, so ``re`` scans fast; a
    # spelling with an escape is found from the escape).
    lines_pattern = encodings.LINE_BREAK_BETWEEN.join(
        _literal(c.encode("utf-8", "surrogateescape")) for c in text)
    matchers = [
        _Matcher(_Form(name, "text"), text_pattern, re.compile(text_pattern),
                 anchors=lambda: [(Literal(value), _EXACT),
                                  *((lit, _ESCAPE) for lit in _escape_literals(text))]),
        _Matcher(_Form(name, "text"), lines_pattern, re.compile(lines_pattern),
                 anchors=lambda: [(Literal(anchor), _LINES)
                                  for anchor in encodings.line_break_anchors(value)]),
        _Matcher(_Form(name, "hex"), _hex_pattern(value),
                 re.compile(_hex_pattern(value)),
                 anchors=lambda: [(Literal(value.hex().encode(), caseless=True), _EXACT)]),
    ]
    for kind, separator in encodings.HEX_SEPARATORS.items():
        pattern = encodings.separated_hex_pattern(value, separator)
        matchers.append(_Matcher(
            _Form(name, kind), pattern, re.compile(pattern),
            anchors=functools.partial(_caseless_anchor,
                                      encodings.separated_hex(value, separator))))
    try:
        for codec in ("utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be"):
            encoded = value.decode("utf-8").encode(codec)
            pattern = _literal(encoded)
            matchers.append(_Matcher(_Form(name, codec), pattern,
                                     re.compile(pattern),
                                     anchors=functools.partial(_exact_anchor, encoded)))
    except UnicodeDecodeError:
        pass  # not text: it has no UTF-16 form
    seen: set[bytes] = set()
    for offset in (0, 1, 2):
        for alphabet in (_B64_STD, _B64_URL):
            patterns = _base64_pattern(value, offset, alphabet)
            if patterns is None or patterns[0] in seen:
                continue
            full, core_first, lead, core = patterns
            seen.add(full)
            form = _Form(name, "base64", _Base64Shape(offset, len(value)))
            matchers.append(_Matcher(form, full, re.compile(core_first), lead,
                                     functools.partial(_base64_anchors, core)))
    # base32 only where the value starts the blob: at the four other offsets its first
    # character is one of 8 or 16 (in either case, most letters), and a stream's tail would be
    # tried as the start of a secret at nearly every letter (see ``docs/scrubbing-forms.md``).
    for offset in (0,):
        found = encodings.base32_pattern(value, offset, MIN_SECRET_LENGTH)
        if found is None:
            continue
        full, core_first, lead, core = found
        form = _Form(name, "base32", _Base64Shape(offset, len(value)))
        matchers.append(_Matcher(form, full, re.compile(core_first), lead,
                                 functools.partial(_base32_anchors, core)))
    return matchers


def _exact_anchor(encoded: bytes) -> list[tuple[Literal, str]]:
    return [(Literal(encoded), _EXACT)]


def _caseless_anchor(encoded: bytes) -> list[tuple[Literal, str]]:
    return [(Literal(encoded, caseless=True), _EXACT)]


def _base32_anchors(core: bytes) -> list[tuple[Literal, str]]:
    """The core; the pattern matches from its start (edges and padding)."""
    return [(Literal(core), _AT_START)]


def _base64_anchors(core: bytes) -> list[tuple[Literal, str]]:
    """The core unwrapped, and the characters around each place a line break may split it.

    A wrapped match holds a first line break inside its core; two characters before it are on
    the same line, and two after it are too when lines are at least two characters wide (or
    the core ends there). So one of these literals is in every match wrapped at a width of two
    or more; the pattern then runs around the hit.
    """
    anchors: list[tuple[Literal, str]] = [(Literal(core), _AT_START)]
    for i in range(len(core) - 1):
        left, right = core[max(0, i - 1):i + 1], core[i + 1:i + 3]
        for line_break in (b"\n", b"\r\n"):
            anchors.append((Literal(left + line_break + right), _AROUND))
    return anchors


def _max_match_length(value: bytes) -> int:
    """An upper bound on how long any match of ``value`` can be."""
    text = value.decode("utf-8", "surrogateescape")
    # Each character in its longest spelling, and a line break (at most 3 bytes) after it.
    text_form = sum(max(12, 3 * len(c.encode("utf-8", "surrogateescape")),
                        encodings.extra_char_length(c)) + 3 for c in text)
    base64_form = 3 * (4 * (len(value) + 2) // 3 + 4) + 4
    base32_form = 8 * len(value) // 5 + 10
    return max(text_form, base64_form, base32_form, 3 * len(value), 4 * len(text) + 4)


def _min_width(pattern: bytes) -> int:
    """The fewest bytes `pattern` can match, as re's own parser computes it.

    The parser is a private module of `re`: on a Python without it, 0 (no value is skipped).
    """
    try:
        return int(re._parser.parse(pattern).getwidth()[0])  # type: ignore[attr-defined]
    except AttributeError:
        return 0


_Found = tuple[int, int, _Form]  # start, end, form


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


_PLANS = _PlanCache(256)


def _merged(ends: list[tuple[int, int]], size: int) -> list[tuple[int, int]]:
    """The spans within each (end, reach) of ``ends``, merged where they meet."""
    spans: list[tuple[int, int]] = []
    for low, high in sorted((max(0, end - reach), min(size, end + reach))
                            for end, reach in ends):
        if spans and low <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(high, spans[-1][1]))
        else:
            spans.append((low, high))
    return spans


class Scrubber:
    """The patterns for one grant's secrets with that grant's placeholders.

    Cheap to make: the compiled patterns are shared per value (see ``_Compiled``); only the
    placeholders are this scrubber's own. Two engines, one set of patterns: ``re`` finds
    complete matches fast (one pattern per form, each starting with a literal), and ``regex``
    finds the partial match a stream may end with, only over the last ``max_match_length``
    bytes.
    """

    __slots__ = ("_matchers", "_placeholders", "_plan", "max_match_length",
                 "min_match_length")

    def __init__(self, scrub: Mapping[str, tuple[str, str]]) -> None:
        """``scrub`` maps secret name -> (real value, placeholder the agent used)."""
        compiled: list[_Compiled] = []
        self._placeholders: dict[str, bytes] = {}
        for name, (value, placeholder) in scrub.items():
            raw = value.encode("utf-8", "surrogateescape")
            if len(raw) < MIN_SECRET_LENGTH:
                continue
            compiled.append(_COMPILED.get(name, raw))
            self._placeholders[name] = placeholder.encode()
        self._matchers = [m for part in compiled for m in part.matchers]
        self._plan = _PLANS.get(tuple(compiled)) if compiled else None
        self.max_match_length = max((part.max_match_length for part in compiled), default=0)
        # No match is shorter than this, so a shorter value (most response headers) is clean
        # without running a single pattern.
        self.min_match_length = min((part.min_match_length for part in compiled), default=0)

    def __repr__(self) -> str:
        return f"<Scrubber {sorted(self._placeholders)}>"

    @property
    def empty(self) -> bool:
        """Nothing to find: every value passes unchanged."""
        return not self._matchers

    def placeholder_of(self, secret: str) -> bytes:
        return self._placeholders[secret]

    def scrub(self, data: bytes) -> tuple[bytes, dict[str, int]]:
        """Scrub a whole value (a header, a reason, a buffered body)."""
        if len(data) < self.min_match_length or not self._matchers:
            return data, {}
        counts: dict[str, int] = {}
        out, _ = self._scrub(data, counts, final=True)
        return out, counts

    def stream(self) -> StreamScrubber:
        return StreamScrubber(self)

    def _find(self, data: bytes) -> list[_Found]:
        """Every complete match, leftmost first, longest first at one position, no overlaps."""
        return self._search(data)[0]

    def _search(self, data: bytes) -> tuple[list[_Found], int]:
        """``_find``'s matches, and where the last escape of a secret's character ends (-1).

        One literal pass finds where a match can be; the patterns run only there.
        """
        plan = self._plan
        if plan is None:
            return [], -1
        found: set[_Found] = set()
        around: dict[_Matcher, list[tuple[int, int]]] = {}
        last_escape = -1
        literals = plan.literals if b"\n" in data else plan.literals_on_one_line
        for index, end in literals.find(data):
            matcher, kind, length = plan.anchors[index]
            start = end - length
            if kind == _EXACT:
                found.add((start, end, matcher.form))
            elif kind == _AT_START:
                match = matcher.search.match(data, start)
                if match is not None:
                    self._add(found, data, matcher, match)
            else:
                reach = plan.long_match_length if kind == _LINES else plan.max_match_length
                around.setdefault(matcher, []).append((end, reach))
                if kind == _ESCAPE:
                    last_escape = max(last_escape, end)
        for matcher, ends in around.items():
            for low, high in _merged(ends, len(data)):
                for match in matcher.search.finditer(data, low, high):
                    self._add(found, data, matcher, match)
        ordered = sorted(found, key=lambda f: (f[0], f[0] - f[1]))
        chosen: list[_Found] = []
        last = 0
        for item in ordered:
            if item[0] >= last:
                chosen.append(item)
                last = item[1]
        return chosen, last_escape

    def _add(self, found: set[_Found], data: bytes, matcher: _Matcher,
             match: re.Match[bytes]) -> None:
        start = self._lead_start(data, match.start(), matcher.lead)
        if start is not None:
            found.add((start, match.end(), matcher.form))

    @staticmethod
    def _lead_start(data: bytes, start: int, lead: frozenset[int]) -> int | None:
        """Where a base64 match really starts: its edge character, maybe before a line break."""
        if not lead:
            return start
        for gap in (b"", b"\n", b"\r\n"):
            at = start - len(gap) - 1
            if at >= 0 and data[at + 1:start] == gap and data[at] in lead:
                return at
        return None  # the edge character does not fit: not this secret at this offset

    def _scrub(self, data: bytes, counts: dict[str, int], *, final: bool) -> tuple[bytes, int]:
        """Scrub ``data``; return the output and how many trailing bytes were held back."""
        if not self._matchers:
            return data, 0
        found, last_escape = self._search(data)
        cut = len(data)
        if not final:
            cut = self._hold_from(data, found, last_escape=last_escape)
        if not found:  # the common case: hand the bytes on without copying them
            return (data if cut == len(data) else data[:cut]), len(data) - cut
        # The spans between matches are views, not slices: the join is the one copy made.
        view = memoryview(data)
        out: list[bytes | memoryview] = []
        position = 0
        for start, end, form in found:
            if start >= cut:
                break  # found again, whole, once more bytes came
            out.append(view[position:start])
            out.append(form.replacement(data[start:end], self._placeholders[form.secret]))
            counts[form.secret] = counts.get(form.secret, 0) + 1
            position = end
        cut = max(cut, position)  # a match found by ``re`` may reach past a partial one
        out.append(view[position:cut])
        return b"".join(out), len(data) - cut

    def _hold_from(self, data: bytes, found: list[_Found], *, may_grow: bool = True,
                   last_escape: int | None = None) -> int:
        """The first byte that could still be part of a secret once more bytes arrive.

        ``may_grow``: also hold a complete match that ends with the data (more base64 padding
        may follow in a stream; a message is complete, so it is not held for that).
        ``last_escape``: where the last escape of a secret's character ends, -1 for none, None
        when not known.
        """
        plan = self._plan
        if plan is None:
            return len(data)
        window = max(0, len(data) - self.max_match_length)
        if last_escape is not None and last_escape <= window:
            # No escape in reach: a partial match is as short as an unescaped one (an escape
            # cut by the end of the data is short too), unless its end looks like one of the
            # long forms.
            plain = len(data) - plan.plain_match_length
            if _may_end_a_long_form(data):
                plain = len(data) - plan.long_match_length
            window = max(window, plain)
        for start, end, _ in found:  # never cut through a complete match
            if start < window < end:
                window = end
        size = len(data)
        starts = plan.starts
        if plan.tail_starts is None:
            return size
        # The earliest start of a partial match wins; only a start whose first three bytes (or
        # fewer, at the end) can begin some form is tried.
        for candidate in plan.tail_starts.finditer(data, window):
            at = candidate.start()
            for partial in starts[data[at:at + 3]]:
                match = partial.match(data, at, partial=True)
                # A match that ends with the data could still grow (base64 padding).
                if match is not None and (match.partial or (may_grow and match.end() == size)):
                    return at
        return size


def scrubber_for(scrub: Mapping[str, tuple[str, str]]) -> Scrubber:
    """The scrubber for these secrets and placeholders; only a new value set compiles."""
    return Scrubber(scrub)


class StreamScrubber:
    """One stream's rolling state: feed chunks in order, then ``finish``.

    Chunk boundaries may fall anywhere, also inside a secret; the counts add up over the stream.
    """

    __slots__ = ("_held", "_scrubber", "counts")

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._held = b""
        self.counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<StreamScrubber holding {len(self._held)} bytes>"

    @property
    def held_length(self) -> int:
        """How many bytes are held back as the start of a possible match."""
        return len(self._held)

    def feed(self, chunk: bytes) -> bytes:
        data = self._held + chunk if self._held else chunk
        out, held = self._scrubber._scrub(data, self.counts, final=False)
        # Held bytes are a partial match, bounded by the longest form: memory stays bounded.
        self._held = data[len(data) - held:] if held else b""
        return out

    def finish(self) -> bytes:
        data, self._held = self._held, b""
        out, _ = self._scrubber._scrub(data, self.counts, final=True)
        return out

    def rebind(self, scrubber: Scrubber) -> StreamScrubber:
        """The same stream, searched for ``scrubber``'s values from the next chunk on (a
        rotation): the held partial match goes along and is searched again with the next
        chunk, so a value split across the switch is still found (keep the old values in
        ``scrubber``)."""
        moved = StreamScrubber(scrubber)
        moved._held, moved.counts = self._held, self.counts
        return moved


class MessageScrubber:
    """Scrubs a sequence of messages (WebSocket frames) whose boundaries must be kept.

    A secret split across messages is found by scanning each message after the tail of the
    ones before. Bytes already delivered cannot be recalled, so a message never ends with a
    partial match of ``MIN_SECRET_LENGTH`` bytes or more, counted from where the match starts,
    also when that start was delivered in an earlier message: the undelivered part is moved to
    the next message. So however the upstream slices a secret (down to one byte per message),
    at most its first ``MIN_SECRET_LENGTH - 1`` bytes (of one form) reach the client; the rest
    becomes the placeholder. A shorter partial match is delivered (holding every message that
    ends like the start of a secret would cut ordinary messages in two).
    """

    __slots__ = ("_context", "_held", "_scrubber", "counts")

    def __init__(self, scrubber: Scrubber) -> None:
        self._scrubber = scrubber
        self._context = b""  # delivered bytes, raw, kept to find a secret that continues
        self._held = b""  # bytes not delivered yet: a long partial match
        self.counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"<MessageScrubber holding {len(self._held)} bytes>"

    def message(self, content: bytes) -> bytes:
        scrubber = self._scrubber
        if scrubber.empty:
            return content
        data = self._context + self._held + content
        skip = len(self._context)
        found, last_escape = scrubber._search(data)
        cut = scrubber._hold_from(data, found, may_grow=False, last_escape=last_escape)
        if len(data) - cut < MIN_SECRET_LENGTH:
            cut = len(data)  # a short partial match is delivered
        # A long partial match that began in a delivered message: hold what is not delivered.
        cut = max(cut, skip)
        out: list[bytes] = []
        position = skip
        for start, end, form in found:
            if end <= skip:
                continue  # scrubbed when it was delivered
            if start >= cut:
                break
            out.append(data[position:max(start, skip)])
            placeholder = scrubber.placeholder_of(form.secret)
            out.append(form.replacement(data[start:end], placeholder) if start >= skip
                       else placeholder)
            self.counts[form.secret] = self.counts.get(form.secret, 0) + 1
            position = end
        cut = max(cut, position)
        out.append(data[position:cut])
        self._held = data[cut:]
        self._context = data[:cut][-scrubber.max_match_length:]
        return b"".join(out)

    def rebind(self, scrubber: Scrubber) -> MessageScrubber:
        """The same message sequence, searched for ``scrubber``'s values from the next
        message on; the delivered context and the held partial match go along."""
        moved = MessageScrubber(scrubber)
        moved._context, moved._held, moved.counts = self._context, self._held, self.counts
        return moved

    def finish(self) -> bytes:
        """What is still held when the connection ends, scrubbed."""
        held, self._held = self._held, b""
        out, _ = self._scrubber._scrub(held, self.counts, final=True)
        return out
