"""The one spelling of a request path: what the policy is matched on and what is sent upstream.

Below the policy (policy/path_reach.py asks it whether a pattern can ever match) and the signer
(a re-signed path must already be canonical), so it lives with the request.
"""

from __future__ import annotations

from functools import lru_cache

# RFC 3986 section 2.3: escapes of these characters are equivalent to the characters, so
# decoding them gives the one spelling both we and every upstream agree on.
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset("0123456789abcdefABCDEF")
# Characters that some upstream reads as a separator or decodes again: "%2f"/"%5c" as "/",
# "\\" as "/" (IIS, some proxies), "%25" as the start of a second round of decoding, ";" as a
# path parameter that Tomcat/Jetty drop ("/v1/..;/admin" is "/admin" there), "%00" as an end.
_AMBIGUOUS_ESCAPES = frozenset({"2F", "5C", "25", "00", "3B"})


class AmbiguousPath(ValueError):
    """A path that some upstream would read differently from how the policy matched it."""


def canonical_path(path: str) -> str:
    """The one spelling of ``path`` that the policy is matched on and that is sent upstream.

    Agents call the same few endpoints, so short paths are remembered (at most 4,096 of up to
    256 characters: 1 MiB however many distinct paths an agent sends).
    """
    if len(path) <= _CACHED_PATH_LENGTH:
        return _cached_canonical_path(path)
    return _canonical_path(path)


_CACHED_PATH_LENGTH = 256


@lru_cache(maxsize=4096)
def _cached_canonical_path(path: str) -> str:
    return _canonical_path(path)


def _canonical_path(path: str) -> str:
    """`canonical_path` without the cache.

    Escapes of unreserved characters are decoded ("/v%31" is "/v1") and other escapes are put in
    upper case; anything an upstream could resolve to another path (dot segments, empty
    segments, encoded or literal backslashes and slashes, double encoding, ``;`` parameters,
    NUL or control characters) is refused rather than guessed.
    """
    if not path.startswith("/"):
        raise AmbiguousPath("the path must start with /")
    out: list[str] = []
    index = 0
    while index < len(path):
        char = path[index]
        if char == "%":
            escape = path[index + 1 : index + 3]
            if len(escape) != 2 or not set(escape) <= _HEX:
                raise AmbiguousPath("a malformed percent-escape in the path")
            escape = escape.upper()
            if escape in _AMBIGUOUS_ESCAPES:
                raise AmbiguousPath(f"%{escape} in the path")
            decoded = chr(int(escape, 16))
            out.append(decoded if decoded in _UNRESERVED else "%" + escape)
            index += 3
            continue
        # Raw non-ASCII is refused too: some servers fold Unicode look-alikes ("\uff0e") to ASCII.
        if char in "\\;" or not 0x21 <= ord(char) <= 0x7E:
            raise AmbiguousPath(f"{char!r} in the path")
        out.append(char)
        index += 1
    canonical = "".join(out)
    segments = canonical.split("/")[1:]
    for position, segment in enumerate(segments):
        if segment in (".", ".."):
            raise AmbiguousPath("a dot segment in the path")
        if segment == "" and position != len(segments) - 1:
            raise AmbiguousPath("an empty segment (//) in the path")
    return canonical
