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

Where: the forms' patterns and replacements are built in ``forms``; a value's compiled
patterns and the search plan over a set of values (both cached) in ``plan``; this module
searches with them and scrubs whole values, streams and message sequences.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from broker_proxy.scrubbing.forms import (
    _AT_START,
    _ESCAPE,
    _EXACT,
    _LINES,
    MIN_SECRET_LENGTH,
    _Found,
    _Matcher,
    _matchers_of,
)
from broker_proxy.scrubbing.plan import (
    _COMPILED,
    _Compiled,
    _may_end_a_long_form,
    _PlanCache,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "_COMPILED",
    "MessageScrubber",
    "Scrubber",
    "StreamScrubber",
    "_PlanCache",
    "_matchers_of",
    "scrubber_for",
]


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
        # A start that runs to the end of the data is a partial match as it stands: the same
        # patterns said so of exactly these bytes (``_starts_of``), and no complete match is
        # that short. Only earlier starts need a pattern run (one per value holding the start:
        # values that share a prefix, such as a vendor's key format, each cost one).
        at_end = size - min(3, self.min_match_length - 1)
        # The earliest start of a partial match wins; only a start whose first three bytes (or
        # fewer, at the end) can begin some form is tried.
        for candidate in plan.tail_starts.finditer(data, window):
            at = candidate.start()
            if at >= at_end:
                return at
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
