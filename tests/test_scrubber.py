"""The streaming scrubber and the bounded decoder: every form, every split, every bound."""

from __future__ import annotations

import base64
import gzip
import json
import secrets
import zlib
from urllib.parse import quote

import brotli
import pytest

from broker_proxy.scrubbing import scrubber as scrubber_module
from broker_proxy.scrubbing.content_decoding import (
    BodyNotDecodable,
    DecodeLimits,
    StreamDecoder,
    decode_whole,
    parse_content_encoding,
)
from broker_proxy.scrubbing.scrubber import (
    MIN_SECRET_LENGTH,
    MessageScrubber,
    Scrubber,
    scrubber_for,
)
from tests.reflect_upstream import FORMS, encode_body, reflected_body

try:
    from compression import zstd  # type: ignore[import-not-found]
except ImportError:
    from backports import zstd  # type: ignore[import-not-found,no-redef]

PLACEHOLDER = "{{secret:api_key}}"


def random_value(length: int = 30) -> str:
    return secrets.token_urlsafe(length)[:length]


def scrubber(value: str) -> Scrubber:
    return Scrubber({"api_key": (value, PLACEHOLDER)})


@pytest.mark.parametrize("form", sorted(FORMS))
def test_every_reflected_form_is_found_and_replaced(form: str) -> None:
    value = random_value()
    body = reflected_body(value.encode(), [form])
    scrubbed, counts = scrubber(value).scrub(body)
    assert counts == {"api_key": 1}
    encoded = FORMS[form](value.encode()).replace(b"\r", b"").replace(b"\n", b"")
    assert encoded[6:-6] not in scrubbed.replace(b"\r", b"").replace(b"\n", b"")


@pytest.mark.parametrize("length", [30, 31, 32])
@pytest.mark.parametrize("prefix", [b"", b"u", b"us", b"user:"])
@pytest.mark.parametrize("suffix", [b"", b"-tail", b"\x00\x01"])
def test_base64_at_any_offset_decodes_to_the_placeholder_and_keeps_the_blob(
        length: int, prefix: bytes, suffix: bytes) -> None:
    value = random_value(length)
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        blob = encode(prefix + value.encode() + suffix)
        scrubbed, counts = scrubber(value).scrub(b"[" + blob + b"]")
        assert counts == {"api_key": 1}
        inner = scrubbed[1:-1]
        decoded = base64.b64decode(inner + b"=" * (-len(inner) % 4),
                                   altchars=b"-_" if encode is base64.urlsafe_b64encode
                                   else None)
        # Up to two spaces keep the rest of an unpadded blob aligned.
        assert decoded.replace(PLACEHOLDER.encode() + b"  ", PLACEHOLDER.encode()).replace(
            PLACEHOLDER.encode() + b" ", PLACEHOLDER.encode()) == (
            prefix + PLACEHOLDER.encode() + suffix)


def test_line_wrapped_base64_is_found_whatever_the_wrap_point() -> None:
    value = random_value(48)
    for pad in range(0, 60, 7):
        blob = base64.encodebytes(b"w" * pad + value.encode() + b"w" * 30)
        scrubbed, counts = scrubber(value).scrub(blob)
        assert counts == {"api_key": 1}, pad
        assert value.encode() not in base64.b64decode(scrubbed.replace(b"\n", b"") + b"==")


def test_mixed_percent_and_json_escapes_are_found() -> None:
    value = "sk/" + random_value() + "+x"
    mixed = "".join(f"%{ord(c):02x}" if i % 3 == 0 else (f"\\u{ord(c):04X}" if i % 3 == 1
                                                        else c) for i, c in enumerate(value))
    scrubbed, counts = scrubber(value).scrub(mixed.encode())
    assert counts == {"api_key": 1}
    assert scrubbed == PLACEHOLDER.encode()  # a backslash in the match: JSON-escaped
    json_escaped = json.dumps(value).replace("/", "\\/")[1:-1].encode()
    scrubbed_json, _ = scrubber(value).scrub(b'{"k": "' + json_escaped + b'"}')
    assert json.loads(scrubbed_json) == {"k": PLACEHOLDER}
    scrubbed_percent, _ = scrubber(value).scrub(quote(value, safe="").encode())
    assert scrubbed_percent == quote(PLACEHOLDER, safe="").encode()


def test_hex_keeps_the_case_it_found() -> None:
    value = random_value()
    upper, _ = scrubber(value).scrub(value.encode().hex().upper().encode())
    lower, _ = scrubber(value).scrub(value.encode().hex().encode())
    assert upper == PLACEHOLDER.encode().hex().upper().encode()
    assert lower == PLACEHOLDER.encode().hex().encode()


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 17, 4096])
def test_a_secret_split_across_chunks_is_found_in_every_form(chunk: int) -> None:
    value = random_value()
    body = reflected_body(value.encode(), sorted(FORMS)) * 2
    whole, counts = scrubber(value).scrub(body)
    stream = scrubber(value).stream()
    out = b"".join(stream.feed(body[i:i + chunk]) for i in range(0, len(body), chunk))
    out += stream.finish()
    assert out == whole
    assert stream.counts == counts == {"api_key": 2 * len(FORMS)}


def test_stream_holds_back_only_what_could_be_a_secret() -> None:
    value = random_value()
    stream = scrubber(value).stream()
    # Server-sent events that do not look like the secret flow through at once.
    assert stream.feed(b"data: tick\n\n") == b"data: tick\n\n"
    assert stream.feed(b"data: " + value[:10].encode()) == b"data: "
    assert stream.feed(value[10:].encode() + b"\n\n") == PLACEHOLDER.encode() + b"\n\n"


def test_stream_memory_is_bounded_by_the_longest_form() -> None:
    value = random_value()
    scrub = scrubber(value)
    stream = scrub.stream()
    for _ in range(2000):
        stream.feed(secrets.token_bytes(997))
        assert len(stream._held) <= scrub.max_match_length


def test_several_secrets_are_counted_apart() -> None:
    first, second = random_value(), random_value(40)
    scrub = Scrubber({"a": (first, "{{secret:a}}"), "b": (second, "{{secret:b}}")})
    body = first.encode() + b" " + base64.b64encode(second.encode()) + b" " + first.encode()
    scrubbed, counts = scrub.scrub(body)
    assert counts == {"a": 2, "b": 1}
    assert first.encode() not in scrubbed and second.encode() not in scrubbed


def test_unrelated_data_passes_unchanged() -> None:
    data = secrets.token_bytes(1 << 16) + b"%41\\u0041 hello +/=="
    assert scrubber(random_value()).scrub(data) == (data, {})


def test_per_grant_placeholders_reuse_the_compiled_patterns() -> None:
    """Compiling costs 20-100 ms on the event loop: a grant's own placeholders must not."""
    value = random_value()
    before = scrubber_module._COMPILED.builds
    first = scrubber_for({"k": (value, PLACEHOLDER)})
    second = Scrubber({"k": (value, "sk-bp-grant0000000000000000000002")})
    assert scrubber_module._COMPILED.builds == before + 1
    assert first._matchers == second._matchers
    assert first.scrub(value.encode()) == (PLACEHOLDER.encode(), {"k": 1})
    assert second.scrub(b"<" + value.encode() + b">") == (
        b"<sk-bp-grant0000000000000000000002>", {"k": 1})


def test_websocket_messages_keep_their_boundaries_and_a_split_secret_is_found() -> None:
    value = random_value()
    messages = MessageScrubber(scrubber(value))
    assert messages.message(b"hello") == b"hello"
    assert messages.message(b"whole:" + value.encode()) == b"whole:" + PLACEHOLDER.encode()
    first = messages.message(b"split:" + value[:15].encode())
    second = messages.message(value[15:].encode() + b":end")
    assert first + second == b"split:" + PLACEHOLDER.encode() + b":end"
    assert value[:8].encode() not in first
    # A split after only 3 characters: those 3 are delivered, the rest becomes the placeholder.
    first = messages.message(b"x" + value[:3].encode())
    second = messages.message(value[3:].encode())
    assert first == b"x" + value[:3].encode() and second == PLACEHOLDER.encode()
    assert messages.counts == {"api_key": 3}


def test_a_secret_dripped_one_byte_per_message_never_passes() -> None:
    value = random_value()
    messages = MessageScrubber(scrubber(value))
    out = [messages.message(bytes([byte])) for byte in b"echo:" + value.encode() + b":done"]
    joined = b"".join(out)
    assert joined == b"echo:" + value[:3].encode() + PLACEHOLDER.encode() + b":done"
    assert len(out) == len(b"echo:" + value.encode() + b":done")  # one answer per message


def _leaks(value: bytes, form: str, output: bytes) -> list[bytes]:
    """Windows of the secret's own bytes in the form that are in ``output``.

    The secret's own bytes are those that change when the value does (a base64 blob also
    encodes its neighbours). 4 bytes of the raw value (the most a message may show is its
    first 3), 8 of an encoded form (its alphabet is smaller, so 4 would match by chance).
    """
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    other = bytes(alphabet[(alphabet.index(b) + 1) % 64] for b in value)  # same escaping
    encoded, control = FORMS[form](value), FORMS[form](other)
    width = MIN_SECRET_LENGTH if form == "raw" else 8
    runs, run = [], b""
    for mine, theirs in zip(encoded, control, strict=True):
        if mine != theirs:
            run += bytes([mine])
        elif run:
            runs.append(run)
            run = b""
    runs.append(run)
    return [r[i:i + width] for r in runs for i in range(len(r) - width + 1)
            if r[i:i + width] in output]


def test_every_message_and_chunk_size_for_every_form_hides_the_secret() -> None:
    """Each form, cut into pieces of every size from 1 byte to twice its longest encoding."""
    value = random_value().encode()
    scrub = Scrubber({"api_key": (value.decode(), PLACEHOLDER)})
    bodies = {form: b"before " + FORMS[form](value) + b" after" for form in FORMS}
    longest = max(len(FORMS[form](value)) for form in FORMS)
    for form, body in bodies.items():
        whole, _ = scrub.scrub(body)
        for size in range(1, 2 * longest + 1):
            pieces = [body[i:i + size] for i in range(0, len(body), size)]
            stream = scrub.stream()
            streamed = b"".join(stream.feed(piece) for piece in pieces) + stream.finish()
            assert streamed == whole, (form, size)
            messages = MessageScrubber(scrub)
            delivered = [messages.message(piece) for piece in pieces]
            assert not _leaks(value, form, b"".join(delivered) + messages.finish()), (form, size)


PLAIN = b"the secret goes here " * 500 + secrets.token_bytes(3000)
ENCODED = {
    "gzip": gzip.compress(PLAIN),
    "deflate": zlib.compress(PLAIN),
    "raw-deflate": (lambda c: c.compress(PLAIN) + c.flush())(zlib.compressobj(wbits=-15)),
    "br": brotli.compress(PLAIN),
    "zstd": zstd.compress(PLAIN),
}


@pytest.mark.parametrize("name", sorted(ENCODED))
@pytest.mark.parametrize("chunk", [1, 7, 65536])
def test_each_coding_is_decoded_chunk_by_chunk(name: str, chunk: int) -> None:
    coding = "deflate" if name == "raw-deflate" else name
    decoder = StreamDecoder([coding], DecodeLimits())
    data = ENCODED[name]
    out = b"".join(decoder.feed(data[i:i + chunk]) for i in range(0, len(data), chunk))
    assert out + decoder.finish() == PLAIN


def test_stacked_codings_and_several_gzip_members_are_decoded() -> None:
    stacked = encode_body(PLAIN, ["gzip", "br", "zstd"])
    assert decode_whole(stacked, parse_content_encoding("gzip, br, zstd"),
                        DecodeLimits()) == PLAIN
    members = gzip.compress(b"one ") + gzip.compress(b"two")
    assert decode_whole(members, ["gzip"], DecodeLimits()) == b"one two"


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_compression_bombs_stop_at_the_ratio_limit(coding: str) -> None:
    bomb = encode_body(b"\0" * (64 << 20), [coding])
    with pytest.raises(BodyNotDecodable, match="ratio limit"):
        decode_whole(bomb, [coding], DecodeLimits())


def test_decoded_size_limit_is_enforced() -> None:
    with pytest.raises(BodyNotDecodable, match="size limit"):
        decode_whole(gzip.compress(secrets.token_bytes(5000)), ["gzip"],
                     DecodeLimits(max_output=4000))


@pytest.mark.parametrize("coding", ["gzip", "br", "zstd"])
def test_truncated_and_corrupt_bodies_are_not_decodable(coding: str) -> None:
    encoded = encode_body(PLAIN, [coding])
    with pytest.raises(BodyNotDecodable):
        decode_whole(encoded[: len(encoded) // 2], [coding], DecodeLimits())
    with pytest.raises(BodyNotDecodable):
        decode_whole(b"\x00garbage" + encoded, [coding], DecodeLimits())


def test_unknown_coding_is_refused_and_identity_ignored() -> None:
    assert parse_content_encoding("identity, GZIP, x-gzip") == ["gzip", "gzip"]
    with pytest.raises(BodyNotDecodable, match="unsupported content-encoding 'compress'"):
        parse_content_encoding("compress")
