"""A secret's value as a type that cannot leak by accident.

Real credentials travel through code that logs, formats exceptions, pickles for worker
processes and prints reprs in tracebacks. Each of those paths calls ``repr``/``str``/``format``
or ``__reduce__``; here none of them yields the value, so the only way to get it is an explicit,
greppable ``reveal()``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from typing import Any, NoReturn

# C0 controls and DEL. CR/LF split headers (request smuggling, header injection), NUL truncates
# in C-based parsers; the rest have no business in a credential and are refused as well.
_CONTROL_CHAR = re.compile("[\x00-\x1f\x7f]")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class SecretValue:
    """An immutable secret string whose text representations never contain the value.

    Not even the length is shown: a length narrows a brute force and tells a reader which
    token format is in use.
    """

    __slots__ = ("_name", "_value")

    _name: str
    _value: str

    def __init__(self, name: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError("SecretValue holds a str")
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_value", value)

    @property
    def name(self) -> str:
        return self._name

    def reveal(self) -> str:
        """The real value; call it only at the point where it leaves for an allowed upstream."""
        return self._value

    def has_control_chars(self) -> bool:
        """True if the value must never be written into an HTTP header (CR, LF, NUL, C0, DEL)."""
        return _CONTROL_CHAR.search(self._value) is not None

    def __repr__(self) -> str:
        return f"<SecretValue {self._name}>"

    __str__ = __repr__

    def __format__(self, format_spec: str) -> str:
        # f"{secret}" and f"{secret:s}" both land here; the spec is ignored on purpose.
        return repr(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretValue):
            return NotImplemented
        # Constant time over fixed-length digests, so comparing against a guess leaks neither
        # how close it was nor the real value's length.
        same_value = hmac.compare_digest(_digest(self._value), _digest(other._value))
        return same_value and self._name == other._name

    def __hash__(self) -> int:
        # The name only: hashing the value would expose it to timing and to hash-flooding probes.
        return hash(("SecretValue", self._name))

    def __setattr__(self, attr: str, value: Any) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __delattr__(self, attr: str) -> NoReturn:
        raise AttributeError("SecretValue is immutable")

    def __reduce__(self) -> NoReturn:
        # Pickles end up in caches, queues and crash dumps, all outside our control.
        raise TypeError("SecretValue cannot be pickled")

    def __reduce_ex__(self, protocol: Any) -> NoReturn:
        raise TypeError("SecretValue cannot be pickled")

    def __copy__(self) -> SecretValue:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> SecretValue:
        return self
