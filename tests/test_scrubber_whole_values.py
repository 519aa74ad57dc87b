"""Scrubber.scrub on a whole value: every encoding it knows, counts, and what it leaves alone."""

import base64
import html
import json
import quopri
import secrets
from urllib.parse import quote, unquote_to_bytes

import pytest

from broker_proxy.scrubbing.scrubber import Scrubber

PLACEHOLDER = "{{secret:api_key}}"


def random_value() -> str:
    # "+/" and "=" in the value make the percent, JSON and base64 forms differ from the raw one.
    return "sk+/=\"\\" + secrets.token_urlsafe(24) + "é"


def forms_of(value: str) -> dict[str, bytes]:
    raw = value.encode()
    return {
        "raw": raw,
        "percent": quote(raw, safe="").encode(),
        "json": json.dumps(value)[1:-1].encode(),
        "base64": base64.b64encode(raw),
        "base64_no_padding": base64.b64encode(raw).rstrip(b"="),
        "base64_urlsafe": base64.urlsafe_b64encode(raw).rstrip(b"="),
        "base64_urlsafe_padded": base64.urlsafe_b64encode(raw),
        "hex_lower": raw.hex().encode(),
        "hex_upper": raw.hex().upper().encode(),
        # HTML references for "/", "+", "=" and every other character, mixed with raw ones.
        "html_decimal": "".join(f"&#{ord(c)};" for c in value).encode(),
        "html_hex": "".join(f"&#x{ord(c):x};" for c in value).encode(),
        "html_escaped": html.escape(value).encode(),  # &quot; and raw "/", "+", "="
        "html_mixed": "".join(f"&#{ord(c)};" if not c.isalnum() else c
                              for c in value).encode(),
        "quoted_printable": quopri.encodestring(raw),  # "=3D", "=C3=A9"
        "quoted_printable_every_char": "".join(f"={b:02X}" for b in raw).encode(),
        "quoted_printable_soft_breaks": b"=\r\n".join(
            "".join(f"={b:02X}" for b in raw).encode()[i:i + 75]
            for i in range(0, 3 * len(raw), 75)),
        "base32": base64.b32encode(raw),
        "hex_colons": raw.hex(":").encode(),
        "hex_spaces": raw.hex(" ").upper().encode(),
        "hex_dashes": raw.hex("-").encode(),
        "utf32_le": value.encode("utf-32-le"),
        "utf32_be": value.encode("utf-32-be"),
        # Cut every few characters (not bytes: "é" stays whole).
        "lines_lf": "\n".join(value[i:i + 4] for i in range(0, len(value), 4)).encode(),
        "lines_crlf": "\r\n".join(value[i:i + 3] for i in range(0, len(value), 3)).encode(),
    }


def decode_form(form: str, data: bytes) -> bytes:
    if form == "raw":
        return data
    if form == "percent":
        return unquote_to_bytes(data)
    if form == "json":
        return json.loads(b'"' + data + b'"').encode()
    if form.startswith("hex_"):
        return bytes.fromhex(data.decode().replace(":", "").replace("-", "").replace(" ", ""))
    if form.startswith("html"):
        return html.unescape(data.decode()).encode()
    if form.startswith("quoted_printable"):
        return quopri.decodestring(data)
    if form == "base32":
        return base64.b32decode(data)
    if form.startswith("utf32"):
        return data.decode(form.replace("utf32_", "utf-32-")).encode()
    if form.startswith("lines"):
        return data
    altchars = b"-_" if b"-" in data or b"_" in data else None
    return base64.b64decode(data + b"=" * (-len(data) % 4), altchars=altchars)


@pytest.mark.parametrize("form", sorted(forms_of("x")))
def test_every_known_encoding_of_the_value_is_replaced_by_the_placeholder(form):
    value = random_value()
    encoded = forms_of(value)[form]
    scrubber = Scrubber({"api_key": (value, PLACEHOLDER)})
    scrubbed, counts = scrubber.scrub(b'{"echo": "' + encoded + b'"}')
    # The placeholder comes back in the form the value had, so the answer stays well-formed.
    assert scrubbed.startswith(b'{"echo": "') and scrubbed.endswith(b'"}')
    assert decode_form(form, scrubbed[len(b'{"echo": "'):-2]).rstrip(b" ") == PLACEHOLDER.encode()
    assert encoded not in scrubbed
    assert value.encode() not in scrubbed
    assert counts == {"api_key": 1}


def test_base64_of_a_value_whose_length_needs_no_padding_is_replaced():
    value = secrets.token_urlsafe(24)[:30]  # 30 bytes: base64 without "="
    scrubber = Scrubber({"api_key": (value, PLACEHOLDER)})
    scrubbed, _ = scrubber.scrub(base64.b64encode(value.encode()))
    assert scrubbed == base64.b64encode(PLACEHOLDER.encode())


def test_counts_are_per_secret_and_per_occurrence():
    first, second = random_value(), random_value()
    scrubber = Scrubber({"api_key": (first, PLACEHOLDER),
                         "other": (second, "other-PLACEHOLDER")})
    body = b" | ".join([first.encode(), base64.b64encode(first.encode()),
                        quote(second, safe="").encode(), first.encode()])
    scrubbed, counts = scrubber.scrub(body)
    assert counts == {"api_key": 3, "other": 1}
    assert scrubbed == b" | ".join([PLACEHOLDER.encode(), base64.b64encode(PLACEHOLDER.encode()),
                                    b"other-PLACEHOLDER", PLACEHOLDER.encode()])


def test_unrelated_bytes_are_untouched():
    value = random_value()
    scrubber = Scrubber({"api_key": (value, PLACEHOLDER)})
    body = bytes(range(256)) + b"hello world " + secrets.token_bytes(64)
    assert scrubber.scrub(body) == (body, {})


def test_bytes_around_a_value_are_kept():
    value = random_value()
    scrubber = Scrubber({"api_key": (value, PLACEHOLDER)})
    scrubbed, _ = scrubber.scrub(b"\x00\xffbefore" + value.encode() + b"after\xfe")
    assert scrubbed == b"\x00\xffbefore" + PLACEHOLDER.encode() + b"after\xfe"


def test_too_short_a_value_form_is_not_scrubbed():
    # A three-byte value would turn unrelated bytes into placeholders all over a response.
    scrubber = Scrubber({"pin": ("abc", "{{secret:pin}}")})
    assert scrubber.scrub(b"abcdef") == (b"abcdef", {})


def test_scrubber_without_secrets_changes_nothing():
    assert Scrubber({}).scrub(b"anything") == (b"anything", {})
