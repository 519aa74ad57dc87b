"""The fast scrubber against a slow reference, on random bodies with secrets planted in them.

The reference runs every form's whole pattern over the whole body with the ``regex`` module
(overlapping matches, no literal prefilter, no windows, no held tail) and keeps the leftmost,
longest matches: what the scrubber must find, written the plainest way. The scrubber under
test must agree on the whole body, and give the same bytes streamed in random chunks.
"""

from __future__ import annotations

import base64
import random
import secrets

import pytest
import regex

from broker_proxy.scrubbing import literal_search
from broker_proxy.scrubbing import scrubber as scrubber_module
from broker_proxy.scrubbing.scrubber import Scrubber, _matchers_of
from tests.reflect_upstream import FORMS

PLACEHOLDERS = {"a": "{{secret:a}}", "b": "{{secret:b}}"}
NOISE = b"abcdefxyzABCXYZ0123456789+/=-_%\\u\n\r \"{}:,"


def reference_scrub(scrub: dict[str, tuple[str, str]], body: bytes) -> bytes:
    found = []
    for name, (value, _) in scrub.items():
        for matcher in _matchers_of(name, value.encode()):
            for match in regex.finditer(matcher.full, body, overlapped=True):
                found.append((match.start(), match.end(), matcher.form))
    found.sort(key=lambda f: (f[0], f[0] - f[1]))
    out, position = [], 0
    for start, end, form in found:
        if start < position:
            continue
        out.append(body[position:start])
        out.append(form.replacement(body[start:end], scrub[form.secret][1].encode()))
        position = end
    out.append(body[position:])
    return b"".join(out)


def _wrapped(rng: random.Random, value: bytes) -> bytes:
    """Base64 of the value inside a blob, wrapped at a random width of two or more."""
    blob = base64.b64encode(rng.randbytes(rng.randint(0, 5)) + value + rng.randbytes(3))
    width = rng.randint(2, 80)
    line_break = rng.choice([b"\n", b"\r\n"])
    return line_break.join(blob[i:i + width] for i in range(0, len(blob), width))


def _mixed_hex(rng: random.Random, value: bytes) -> bytes:
    return bytes(c if rng.random() < 0.5 else c ^ 0x20 * (c >= 0x61)
                 for c in value.hex().encode())


def _mixed_escapes(rng: random.Random, value: bytes) -> bytes:
    out = []
    for char in value.decode():
        pick = rng.random()
        if pick < 0.3:
            out.append("".join(f"%{b:02x}" for b in char.encode()))
        elif pick < 0.5:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return "".join(out).encode()


def _planted(rng: random.Random, value: bytes) -> bytes:
    kind = rng.choice([*FORMS, "wrapped", "mixed_hex", "mixed_escapes", "prefix"])
    if kind == "wrapped":
        return _wrapped(rng, value)
    if kind == "mixed_hex":
        return _mixed_hex(rng, value)
    if kind == "mixed_escapes":
        return _mixed_escapes(rng, value)
    if kind == "prefix":  # a near miss: most of a secret, then something else
        return value[:rng.randint(1, len(value) - 1)]
    return FORMS[kind](value)


def _random_body(rng: random.Random, values: list[bytes]) -> bytes:
    parts = []
    for _ in range(rng.randint(1, 12)):
        parts.append(bytes(rng.choices(NOISE, k=rng.randint(0, 300))))
        parts.append(_planted(rng, rng.choice(values)))
    parts.append(bytes(rng.choices(NOISE, k=rng.randint(0, 50))))
    return b"".join(parts)


def _values() -> dict[str, tuple[str, str]]:
    first = secrets.token_urlsafe(24)
    second = "k/" + secrets.token_urlsafe(12) + " +\u00e9"
    return {"a": (first, PLACEHOLDERS["a"]), "b": (second, PLACEHOLDERS["b"])}


def _check(seed: int) -> None:
    rng = random.Random(seed)
    scrub = _values()
    body = _random_body(rng, [v.encode() for v, _ in scrub.values()])
    expected = reference_scrub(scrub, body)
    whole, _ = Scrubber(scrub).scrub(body)
    assert whole == expected, seed
    stream = Scrubber(scrub).stream()
    out, at = [], 0
    while at < len(body):
        size = rng.choice([1, 2, 3, 7, 64, 500, 4096])
        out.append(stream.feed(body[at:at + size]))
        at += size
    out.append(stream.finish())
    assert b"".join(out) == expected, seed


@pytest.mark.parametrize("seed", range(60))
def test_scrubber_agrees_with_the_reference(seed: int) -> None:
    _check(seed)


@pytest.mark.parametrize("seed", range(10))
def test_the_fallback_search_agrees_with_the_reference(seed: int, monkeypatch) -> None:
    """Without Hyperscan the literal pass runs in Python: same answers."""
    monkeypatch.setattr(literal_search, "hyperscan", None)
    monkeypatch.setattr(scrubber_module, "_PLANS", scrubber_module._PlanCache(4))
    assert Scrubber(_values())._plan.literals.engine == "python"
    _check(1000 + seed)
