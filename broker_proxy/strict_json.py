"""JSON as the proxy reads it from others: one reading per document, within bounds.

Python's ``json`` keeps the last of duplicate keys (``{"agent": "bot", "agent": "careful"}``
reads as "careful" here and maybe as "bot" in the tool that checked it), recurses once per
nesting level (a 60 KB ``[[[[...`` raises RecursionError) and reads integers of any size
(``max_uses: 10**26`` overflowed SQLite) and NaN/Infinity. ``loads`` refuses all of them with
``JsonRefused``, a ``ValueError``, so callers that already refuse bad JSON refuse these too.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 32
MAX_INT = 2**63 - 1  # what every store the proxy writes to can hold

# A string (escapes included) or a bracket: brackets inside strings do not nest.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class JsonRefused(ValueError):
    """Valid JSON the proxy does not accept: a duplicate key, too deep, a number too large."""


def loads(data: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    text = data.decode("utf-8") if isinstance(data, bytes | bytearray) else data
    _check_depth(text, max_depth)
    return json.loads(text, object_pairs_hook=_object, parse_int=_int,
                      parse_constant=_constant)


def _check_depth(text: str, max_depth: int) -> None:
    depth = 0
    for match in _TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise JsonRefused(f"nested deeper than {max_depth} levels")
        elif token in "]}":
            depth -= 1


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise JsonRefused(f"duplicate key {json.dumps(key)[:80]}")
        result[key] = value
    return result


def _int(text: str) -> int:
    if len(text.lstrip("-")) > 19 or abs(value := int(text)) > MAX_INT:
        raise JsonRefused(f"integer out of range (at most {MAX_INT})")
    return value


def _constant(text: str) -> Any:
    raise JsonRefused(f"{text} is not a number JSON allows")
