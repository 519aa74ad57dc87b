"""Finding an injected secret in what comes back, in every form an upstream may echo it.

An API that reflects its input (debug endpoints, error messages quoting the request, a stored
gist) would hand the real value to the agent. Each secret is compiled into a few patterns, one
per family of encodings, and every match is replaced by the placeholder *in the same encoding*,
so that what the agent receives stays well-formed (a base64 blob still decodes, a JSON string
stays a JSON string) and reads as exactly what the agent sent.

Forms found, and what replaces them:

* text: the raw bytes, where any character may instead be percent-encoded (``%2F``/``%2f``,
  ``+`` for a space) or JSON-escaped (``\\u002f``, ``\\/``, ``\\"``, ...), in any mix. Replaced by
  the raw placeholder; by its percent-encoding when the match holds a ``%``; by its JSON
  escaping when the match holds a backslash.
* hex, either case (replaced by the placeholder's hex, upper case when the match had upper case).
* UTF-16, little and big endian (replaced by the placeholder in the same UTF-16).
* base64, standard and URL-safe, with or without padding, wrapped at any width with LF or CRLF,
  and at any of the three byte offsets inside a larger blob. A secret at offset 1 or 2 of a
  blob shares its first and last base64 characters with its neighbours; those edge characters
  are matched by the set of characters that carry the secret's known bits, so no bit of the
  secret survives. The replacement is computed on bits: the neighbours' bits in the edge
  characters are kept and the placeholder's bytes are put where the secret's were. Unless the
  match ends the blob (``=`` padding), up to two spaces follow the placeholder so its length
  equals the secret's modulo 3: the rest of the blob then decodes unchanged. Line breaks inside
  a match are dropped. URL-safe output is used when the match holds ``-`` or ``_``, or
  is unpadded and holds neither ``+`` nor ``/`` (JWT-style); else standard.

Streaming: ``StreamScrubber.feed`` returns every byte that can no longer be the start of a
match, and holds back only a suffix that is a *partial* match (found with the ``regex``
module's partial matching). A secret split across chunks is found, memory is bounded by the
longest possible match, and a stream that does not look like a secret (server-sent events,
heartbeats) is never delayed.

Not found: a secret shorter than ``MIN_SECRET_LENGTH`` bytes (it would match unrelated bytes all
over a response), encodings not listed here (compression is undone before scrubbing, see
``content_decoding``), and transformations an adversarial upstream could invent (an upstream
that wants to leak a value it received can always do so; this guards against echoes).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

import regex

MIN_SECRET_LENGTH = 4
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
    """One character, raw, percent-encoded or JSON-escaped."""
    encoded = char.encode("utf-8", "surrogateescape")
    options = [_literal(encoded), b"".join(b"%" + _hex_pattern(bytes([b])) for b in encoded)]
    if char == " ":
        options.append(rb"\+")
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


def _b64_class(alphabet: bytes, values: list[int]) -> bytes:
    chars = sorted({alphabet[v] for v in values})
    return b"[" + b"".join(_literal(bytes([c])) for c in chars) + b"]"


@dataclass(frozen=True, slots=True)
class _Base64Shape:
    offset: int  # the secret's byte offset modulo 3 inside the blob
    length: int  # the secret's length in bytes


def _base64_pattern(value: bytes, offset: int,
                    alphabet: bytes) -> tuple[bytes, bytes, frozenset[int]] | None:
    """The base64 characters that can only come from ``value`` at ``offset`` (mod 3).

    Returns the whole pattern, the same without its leading edge character (a literal first
    character lets ``re`` search fast), and the set of bytes that edge character may be.
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
        return core_first, core_first, frozenset()
    lead_class = b"[" + b"".join(_literal(bytes([c])) for c in sorted(set(lead))) + b"]"
    return lead_class + _LINE_BREAK + core_first, core_first, frozenset(lead)


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
    kind: str  # "text" | "hex" | "utf-16-le" | "utf-16-be" | "base64"
    base64_shape: _Base64Shape | None = None

    def replacement(self, matched: bytes, placeholder: bytes) -> bytes:
        if self.kind == "text":
            if b"\\" in matched:  # JSON context: the placeholder must stay a valid string
                return json.dumps(placeholder.decode("utf-8", "replace"))[1:-1].encode()
            if b"%" in matched:
                return quote(placeholder, safe="").encode()
            return placeholder
        if self.kind == "hex":
            upper = any(c in b"ABCDEF" for c in matched)
            encoded = placeholder.hex()
            return (encoded.upper() if upper else encoded).encode()
        if self.kind.startswith("utf-16"):
            return placeholder.decode("utf-8", "replace").encode(self.kind)
        assert self.base64_shape is not None
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
    literal: re.Pattern[bytes] | None = None  # the text form when no escape can be present

    def __repr__(self) -> str:
        return f"<_Matcher {self.form.secret} {self.form.kind}>"


def _matchers_of(name: str, value: bytes) -> list[_Matcher]:
    text = value.decode("utf-8", "surrogateescape")
    text_pattern = b"".join(_text_char_pattern(c) for c in text)
    matchers = [
        _Matcher(_Form(name, "text"), text_pattern, re.compile(text_pattern),
                 literal=re.compile(_literal(value))),
        _Matcher(_Form(name, "hex"), _hex_pattern(value),
                 re.compile(_hex_pattern(value))),
    ]
    try:
        for codec in ("utf-16-le", "utf-16-be"):
            pattern = _literal(value.decode("utf-8").encode(codec))
            matchers.append(_Matcher(_Form(name, codec), pattern,
                                     re.compile(pattern)))
    except UnicodeDecodeError:
        pass  # not text: it has no UTF-16 form
    seen: set[bytes] = set()
    for offset in (0, 1, 2):
        for alphabet in (_B64_STD, _B64_URL):
            patterns = _base64_pattern(value, offset, alphabet)
            if patterns is None or patterns[0] in seen:
                continue
            full, core_first, lead = patterns
            seen.add(full)
            form = _Form(name, "base64", _Base64Shape(offset, len(value)))
            matchers.append(_Matcher(form, full, re.compile(core_first), lead))
    return matchers


def _max_match_length(value: bytes) -> int:
    """An upper bound on how long any match of ``value`` can be."""
    text = value.decode("utf-8", "surrogateescape")
    text_form = sum(max(12, 3 * len(c.encode("utf-8", "surrogateescape"))) for c in text)
    base64_form = 3 * (4 * (len(value) + 2) // 3 + 4) + 4
    return max(text_form, base64_form, 2 * len(value) + 2, 4 * len(text) + 4)


def _min_width(pattern: bytes) -> int:
    """The fewest bytes `pattern` can match, as re's own parser computes it.

    The parser is a private module of `re`: on a Python without it, 0 (no value is skipped).
    """
    try:
        return int(re._parser.parse(pattern).getwidth()[0])  # type: ignore[attr-defined]
    except AttributeError:
        return 0


_Found = tuple[int, int, _Form]  # start, end, form


class _Compiled:
    """The patterns of one secret value, without its placeholder.

    Building them costs 20-35 ms of CPU. They depend only on the value, so every grant holding
    the secret (each with its own placeholder) shares them, and a secret is compiled once per
    value for the life of the process, not per grant. The patterns spell the value out: the
    repr counts them.
    """

    __slots__ = ("matchers", "max_match_length", "min_match_length", "partial")

    def __init__(self, name: str, raw: bytes) -> None:
        self.matchers = tuple(_matchers_of(name, raw))
        self.max_match_length = _max_match_length(raw)
        self.min_match_length = min(_min_width(pattern) for m in self.matchers
                                    for pattern in (m.full, m.search.pattern))
        self.partial = regex.compile(b"|".join(b"(?:" + m.full + b")" for m in self.matchers))

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


class Scrubber:
    """The patterns for one grant's secrets with that grant's placeholders.

    Cheap to make: the compiled patterns are shared per value (see ``_Compiled``); only the
    placeholders are this scrubber's own. Two engines, one set of patterns: ``re`` finds
    complete matches fast (one pattern per form, each starting with a literal), and ``regex``
    finds the partial match a stream may end with, only over the last ``max_match_length``
    bytes.
    """

    __slots__ = ("_matchers", "_partials", "_placeholders", "max_match_length",
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
        self._partials = [part.partial for part in compiled]
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
        found: list[_Found] = []
        escapes = b"%" in data or b"\\" in data or b"+" in data
        for matcher in self._matchers:
            pattern = matcher.search
            if matcher.literal is not None and not escapes:
                pattern = matcher.literal  # same matches, found with a fast literal search
            for match in pattern.finditer(data):
                start = self._lead_start(data, match.start(), matcher.lead)
                if start is not None:
                    found.append((start, match.end(), matcher.form))
        found.sort(key=lambda f: (f[0], f[0] - f[1]))
        chosen: list[_Found] = []
        end = 0
        for item in found:
            if item[0] >= end:
                chosen.append(item)
                end = item[1]
        return chosen

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
        found = self._find(data)
        cut = len(data)
        if not final:
            cut = self._hold_from(data, found)
        out: list[bytes] = []
        position = 0
        for start, end, form in found:
            if start >= cut:
                break  # found again, whole, once more bytes came
            out.append(data[position:start])
            out.append(form.replacement(data[start:end], self._placeholders[form.secret]))
            counts[form.secret] = counts.get(form.secret, 0) + 1
            position = end
        cut = max(cut, position)  # a match found by ``re`` may reach past a partial one
        out.append(data[position:cut])
        return b"".join(out), len(data) - cut

    def _hold_from(self, data: bytes, found: list[_Found], *, may_grow: bool = True) -> int:
        """The first byte that could still be part of a secret once more bytes arrive.

        ``may_grow``: also hold a complete match that ends with the data (more base64 padding
        may follow in a stream; a message is complete, so it is not held for that).
        """
        window = max(0, len(data) - self.max_match_length)
        for start, end, _ in found:  # never cut through a complete match
            if start < window < end:
                window = end
        hold = len(data)
        for partial in self._partials:  # one pattern per value: the earliest start wins
            for match in partial.finditer(data, pos=window, partial=True):
                # A match that ends with the data could still grow (base64 padding).
                if match.partial or (may_grow and match.end() == len(data)):
                    hold = min(hold, match.start())
                    break
        return hold



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
        found = scrubber._find(data)
        cut = scrubber._hold_from(data, found, may_grow=False)
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

    def finish(self) -> bytes:
        """What is still held when the connection ends, scrubbed."""
        held, self._held = self._held, b""
        out, _ = self._scrubber._scrub(held, self.counts, final=True)
        return out
