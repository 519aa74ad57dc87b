"""The encodings a secret is searched in: one pattern per family, and its replacement.

Each secret is compiled into a few patterns, one per family of encodings, and every match is
replaced by the placeholder *in the same encoding*, so that what the agent receives stays
well-formed (a base64 blob still decodes, a JSON string stays a JSON string). The forms and
their replacements are listed in ``scrubber``'s docstring; this module builds them (patterns,
the literals that say where a pattern can match, and the replacement of one match).
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import regex

from broker_proxy.scrubbing import encodings
from broker_proxy.scrubbing.literal_search import Literal

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
    escaped: bytes = regex.escape(data)  # ``regex`` has no annotations
    return escaped


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
