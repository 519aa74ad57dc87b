"""The less common spellings of a secret the scrubber looks for, as patterns and replacements.

Pages, mail and dumps hand a value back in forms an API echo rarely uses: HTML character
references (``&#47;``, ``&#x2F;``, ``&sol;``), quoted-printable (``=2F``, soft line breaks
``=\\r\\n``), a value cut into lines every few characters, hex with a separator between bytes
(``de:ad``, ``de ad``, ``de-ad``), UTF-32 and base32. ``scrubber`` builds its forms from these
plain functions: patterns (bytes for ``re`` and ``regex``), the fixed strings the literal pass
looks for, and the bytes that replace a match. Nothing here holds a value beyond a call.

Bounds that keep a match short (the stream holds back at most the longest one): at most four
leading zeros in a character reference, and a line break between two characters at most once.
Lines are looked for when they are at least three characters wide (``line_break_anchors``).
"""

from __future__ import annotations

import base64
import re

import regex

# The characters template engines and HTML escapers spell by name (html.escape and HTML5's
# most common named references); others are spelled by number.
NAMED_REFERENCES: dict[str, tuple[str, ...]] = {
    "&": ("&amp;",), "<": ("&lt;",), ">": ("&gt;",), '"': ("&quot;",),
    "'": ("&apos;",), "/": ("&sol;",), "+": ("&plus;",), "=": ("&equals;",),
    ":": ("&colon;",), "\u00a0": ("&nbsp;",),
}
_MAX_ZEROS = 4
# A line break between two characters: a raw line feed or CRLF, or a quoted-printable soft
# line break (``=`` at the end of the line).
LINE_BREAK_BETWEEN = rb"(?:=?\r?\n)?"
_BREAKS = (b"\n", b"\r\n", b"=\n", b"=\r\n")
_QP_SOFT_BREAK = rb"(?:=\r?\n)?"
BASE32 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
HEX_SEPARATORS = {"hex-space": b" ", "hex-colon": b":", "hex-dash": b"-"}


def _hex_digits(number: int, width: int = 0) -> bytes:
    """``number`` in hex, digits in either case."""
    out = []
    for digit in f"{number:0{width}x}":
        out.append(f"[{digit}{digit.upper()}]" if digit.isalpha() else digit)
    return "".join(out).encode()


def extra_char_options(char: str) -> list[bytes]:
    """Patterns for ``char`` as an HTML character reference or quoted-printable bytes."""
    code = ord(char)
    options = []
    if not 0xDC80 <= code <= 0xDCFF:  # an undecodable byte has no character reference
        zeros = b"0{0,%d}" % _MAX_ZEROS
        options.append(b"&#(?:" + zeros + str(code).encode() + b"|[xX]" + zeros
                       + _hex_digits(code) + b");?")
        options.extend(regex.escape(name.encode()) for name in NAMED_REFERENCES.get(char, ()))
    encoded = char.encode("utf-8", "surrogateescape")
    # A soft line break may fall between the bytes of one character too.
    options.append(_QP_SOFT_BREAK.join(b"=" + _hex_digits(byte, 2) for byte in encoded))
    return options


def extra_char_length(char: str) -> int:
    """The longest of ``extra_char_options``: a reference with its zeros, or QP with breaks."""
    encoded = char.encode("utf-8", "surrogateescape")
    reference = 4 + _MAX_ZEROS + len(str(ord(char)))
    return max(reference, 6 * len(encoded))


def extra_escape_literals(text: str) -> list[tuple[bytes, bool]]:
    """Fixed strings one of which is in every HTML or QP spelling of ``text``: (bytes, caseless).

    Escapers spell a letter or a digit only when they spell every character, so a letter or
    digit is looked for after another reference (``;&#107``) or escape (``=73=6B``): longer
    strings, which the literal pass finds faster than a short one per character. Other
    characters (``/``, ``+``, ``=``, ``-``, non-ASCII) are looked for alone. A reference with
    leading zeros holds ``&#0`` or ``&#x0``.
    """
    literals: list[tuple[bytes, bool]] = [(b"&#0", False), (b"&#x0", True)]
    previous = ""
    for char in text:
        code = ord(char)
        encoded = char.encode("utf-8", "surrogateescape")
        qp = b"".join(b"=%02X" % byte for byte in encoded)
        alone = not (char.isascii() and char.isalnum())
        if not 0xDC80 <= code <= 0xDCFF:
            before = b"" if alone else b";"
            if alone or previous:
                literals += [(before + b"&#%d" % code, False), (before + b"&#x%x" % code, True)]
            literals += [(name.encode(), False) for name in NAMED_REFERENCES.get(char, ())]
        if alone:
            literals.append((qp[:3], True))
        elif previous:
            prior = previous.encode("utf-8", "surrogateescape")
            literals.append((b"".join(b"=%02X" % byte for byte in prior) + qp, True))
        previous = char
    return literals


def line_break_anchors(raw: bytes) -> list[bytes]:
    """The characters around each place a line break may cut ``raw``, with the break.

    In a value cut into lines at least three characters wide, the first break of a match has
    the (up to) three characters of the value before it on its line and the three after it (or
    the value's end) on the next, so one of these strings is in every such match. Three, not
    two as for wrapped base64: text lines are common, and a two-character anchor met ordinary
    text often enough to cost more than the rest of the scan.
    """
    anchors: list[bytes] = []
    for i in range(len(raw) - 1):
        left, right = raw[max(0, i - 2):i + 1], raw[i + 1:i + 4]
        anchors.extend(left + line_break + right for line_break in _BREAKS)
    return anchors


def html_replacement(placeholder: bytes) -> bytes:
    return (placeholder.replace(b"&", b"&amp;").replace(b"<", b"&lt;").replace(b">", b"&gt;")
            .replace(b'"', b"&quot;").replace(b"'", b"&#x27;"))


_QUOTED_PRINTABLE = re.compile(rb"=(?:[0-9A-Fa-f]{2}|\r?\n)")


def is_quoted_printable(matched: bytes) -> bool:
    return _QUOTED_PRINTABLE.search(matched) is not None


def quoted_printable_replacement(placeholder: bytes) -> bytes:
    return b"".join(b"=%02X" % b if b == 0x3D or not 0x20 <= b < 0x7F else bytes([b])
                    for b in placeholder)


# Hex with a separator between bytes.


def separated_hex(value: bytes, separator: bytes) -> bytes:
    return separator.join(b"%02x" % b for b in value)


def separated_hex_pattern(value: bytes, separator: bytes) -> bytes:
    return re.escape(separator).join(_hex_digits(b, 2) for b in value)


def separated_hex_replacement(matched: bytes, separator: bytes, placeholder: bytes) -> bytes:
    out = separated_hex(placeholder, separator)
    return out.upper() if any(c in b"ABCDEF" for c in matched) else out


# base32 (RFC 4648), where the value starts a blob (the scrubber asks for offset 0 only).


def _class(chars: set[int]) -> bytes:
    return b"[" + b"".join(regex.escape(bytes([c])) for c in sorted(chars)) + b"]"


def base32_pattern(value: bytes, offset: int,
                   min_core: int) -> tuple[bytes, bytes, frozenset[int], bytes] | None:
    """As ``forms._base64_pattern``, for base32 with the value at ``offset`` (mod 5).

    Returns the whole pattern, the same without its edge character, the bytes that edge
    character may be, and the core for the literal prefilter. Upper case only, as RFC 4648
    and its encoders write it: lower case would make most lower-case letters of a stream's
    tail a possible start of a secret (see ``docs/scrubbing-forms.md``).
    """
    low, high = 8 * offset, 8 * (offset + len(value))
    encoded = base64.b32encode(b"\0" * offset + value).rstrip(b"=")
    core = encoded[-(-low // 5):high // 5]
    if len(core) < min_core:
        return None
    parts = [regex.escape(bytes([c])) for c in core]
    trailing = high % 5
    if trailing:  # the last byte's low bits, then the neighbour's
        last = value[-1] & ((1 << trailing) - 1)
        spare = 5 - trailing
        parts.append(_class({BASE32[(last << spare) | q] for q in range(1 << spare)}))
    core_first = b"".join(parts) + b"(?:={1,6})?"
    leading = low % 5
    if not leading:
        return core_first, core_first, frozenset(), core
    known = 5 - leading  # the first byte's high bits, after the neighbour's
    top = value[0] >> (8 - known)
    lead = {BASE32[(p << known) | top] for p in range(1 << leading)}
    return _class(lead) + core_first, core_first, frozenset(lead), core


def base32_replacement(matched: bytes, offset: int, length: int, placeholder: bytes) -> bytes:
    """Re-encode the matched characters with the placeholder's bytes in the secret's place."""
    padded = b"=" in matched
    text = matched.rstrip(b"=")
    lookup = {c: i for i, c in enumerate(BASE32)}
    bits = 0
    for char in text:
        bits = (bits << 5) | lookup[char]
    total = 5 * len(text)
    lead = (8 * offset) % 5
    tail = total - lead - 8 * length
    lead_bits = bits >> (total - lead)
    tail_bits = bits & ((1 << tail) - 1)
    if not padded:  # keep the rest of the blob aligned: the same length modulo 5
        placeholder += b" " * ((length - len(placeholder)) % 5)
    new_bits = (lead_bits << (8 * len(placeholder))) | int.from_bytes(placeholder, "big")
    new_total = lead + 8 * len(placeholder)
    if not padded:
        new_bits, new_total = (new_bits << tail) | tail_bits, new_total + tail
    fill = -new_total % 5
    new_bits, new_total = new_bits << fill, new_total + fill
    out = bytes(BASE32[(new_bits >> (new_total - 5 * (i + 1))) & 31]
                for i in range(new_total // 5))
    if padded:
        out += b"=" * (-((8 * offset) // 5 + len(out)) % 8)
    return out
