"""Does one destination cover another? Inclusion of host patterns, path globs and methods.

Used to tell a widening from a narrowing (``policy diff``) and to find a destination that a
wider one of the same secret already covers (``policy check`` warnings). Every answer errs on
the side of "not covered": a widening is then reported when in doubt, never hidden.
"""

from __future__ import annotations

from functools import lru_cache

from broker_proxy.policy.destinations import host_matches
from broker_proxy.policy.model import Destination


def host_covers(outer: str, inner: str) -> bool:
    """Every host ``inner`` matches is matched by ``outer`` (both canonical patterns)."""
    if outer == inner:
        return True
    if not outer.startswith("*."):
        return False
    if inner.startswith("*."):
        # "*.a.example.com" covers names under a.example.com: all also under example.com.
        return inner[2:].endswith(outer[1:])
    return host_matches(outer, inner)


def _segments(glob: str) -> tuple[str, ...]:
    return tuple(glob.split("/")[1:])


@lru_cache(maxsize=4096)
def _star_covers(outer: str, inner: str) -> bool:
    """Within one segment: every text ``inner`` matches, ``outer`` matches.

    ``inner``'s "*" stands for any text, so only a "*" of ``outer`` may absorb it; literal
    characters must meet equal literal characters. Sound (a yes is always right).
    """
    if not outer:
        return not inner
    if outer[0] == "*":
        return any(_star_covers(outer[1:], inner[skip:]) for skip in range(len(inner) + 1))
    return bool(inner) and inner[0] == outer[0] and inner[0] != "*" and \
        _star_covers(outer[1:], inner[1:])


@lru_cache(maxsize=4096)
def _segments_cover(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    if not outer:
        return not inner
    if outer[0] == "**":
        return any(_segments_cover(outer[1:], inner[skip:]) for skip in range(len(inner) + 1))
    return bool(inner) and inner[0] != "**" and _star_covers(outer[0], inner[0]) and \
        _segments_cover(outer[1:], inner[1:])


def glob_covers(outer: str, inner: str) -> bool:
    """Every path ``inner`` matches is matched by ``outer`` (path globs as the policy writes)."""
    return outer == inner or _segments_cover(_segments(outer), _segments(inner))


def paths_cover(outer: tuple[str, ...], inner: tuple[str, ...]) -> bool:
    """An empty tuple is every path."""
    if not outer:
        return True
    if not inner:
        return any(glob == "/**" for glob in outer)
    return all(any(glob_covers(o, i) for o in outer) for i in inner)


def uncovered_globs(outer: tuple[str, ...], inner: tuple[str, ...]) -> tuple[str, ...]:
    """The globs of ``inner`` that ``outer`` does not cover ("/**" standing for "every path")."""
    if not outer:
        return ()
    return tuple(i for i in (inner or ("/**",)) if not any(glob_covers(o, i) for o in outer))


def destination_covers(outer: Destination, inner: Destination) -> bool:
    """Every request ``inner`` lets a secret go to, ``outer`` lets it go to as well."""
    if (outer.scheme, outer.port) != (inner.scheme, inner.port):
        return False
    if not host_covers(outer.host, inner.host) or not inner.methods <= outer.methods:
        return False
    if outer.aws is not None and (inner.aws is None
                                  or not inner.aws.services <= outer.aws.services
                                  or not inner.aws.regions <= outer.aws.regions):
        return False
    return paths_cover(outer.paths, inner.paths)
