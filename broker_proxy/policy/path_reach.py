"""Path patterns that can never match a request that carries a secret.

A secret-carrying request is matched on its canonical path (``request.paths.canonical_path``):
dot segments, empty segments, ";" parameters and encoded slashes are refused, and escapes of
unreserved characters are decoded. A pattern whose literal text is not canonical ("/a//b",
"/v%31/x", "/files;v=1", "/a/./b") therefore never matches, and would silently give the secret
no destination there. The pattern is checked by filling each wildcard with a plain segment
character and asking the proxy's own canonicaliser.
"""

from __future__ import annotations

import re

from broker_proxy.request.paths import AmbiguousPath, canonical_path

# Segments of unreserved characters and wildcards, none of them "." or "..": the canonical
# form of such a pattern is the pattern itself, so most patterns skip the sample (a policy of
# 100,000 secrets spent a second here). Anything else takes the full check below.
_PLAIN = re.compile(r"(?:/(?!\.\.?(?:/|$))[A-Za-z0-9._~*-]+)+/?")


def unreachable_reason(glob: str) -> str | None:
    """Why ``glob`` can never match a canonical request path, or None if it can."""
    if _PLAIN.fullmatch(glob):
        return None
    sample = "/".join("x" if segment == "**" else segment.replace("*", "x")
                      for segment in glob.split("/"))
    try:
        canonical = canonical_path(sample)
    except AmbiguousPath as error:
        return f"can never match: requests with such a path are refused ({error})"
    if canonical != sample:
        example = "" if "*" in glob else f" ({canonical})"
        return ("can never match: requests are matched on their canonical path; write the "
                f"pattern in that form{example}")
    return None
