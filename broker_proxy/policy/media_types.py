"""A destination's ``withhold`` list: media types whose answers from its host are never passed on.

Some forms a secret can come back in are out of the scrubber's reach (7z and rar archives, PDF
streams, a brotli or deflate body without a label: see docs/scrubbing-forms.md). A policy that
knows a service serves such answers lists their media types under the destination; every
answer from that host whose media type matches is replaced by a 502 ``response_withheld``,
whichever grant asks. By host, like scrubbing (grant_scrub.py): a value stored through one
endpoint of a service is readable through its others.

The media type is taken from Content-Type (parameters dropped, lower case). It is not trusted
alone: whoever stored an object often chose its label, and a 7z archive labelled
``application/octet-stream`` or ``text/plain`` is still a 7z archive. So at a host with a
withhold list the first bytes of the body (after content codings are undone) are also compared
with the magic numbers of the formats below, and the media type they name is matched too.
A format without magic bytes (brotli, raw deflate) can only be withheld by its label.

Stdlib only: the loader validates patterns here, the index (destinations.py) builds one
``WithholdRule`` per host at policy load, and the response path only calls ``declared`` and
``sniffed``; a host without a withhold list costs nothing more than before.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from functools import lru_cache

import yaml

from broker_proxy.policy.checking import NodeChecker

# RFC 9110 token characters, plus "*" for "any run of characters"; lower case once read.
_TOKEN = r"[a-z0-9!#$%&'+.^_`|~*-]+"
MEDIA_PATTERN = re.compile(rf"{_TOKEN}/{_TOKEN}")
# For the JSON Schema (which has no case folding): the loader lower-cases first.
MEDIA_PATTERN_SCHEMA = r"^[A-Za-z0-9!#$%&'+.^_`|~*-]+/[A-Za-z0-9!#$%&'+.^_`|~*-]+$"

# Magic bytes at the start of a body -> the media types that format is served under. bzip2:
# "BZh", the block size, then a block's or the stream end's magic (text may start with "BZh").
MAGIC_MEDIA_TYPES: tuple[tuple[re.Pattern[bytes], tuple[str, ...]], ...] = tuple(
    (re.compile(magic, re.DOTALL), types) for magic, types in (
        (rb"7z\xbc\xaf\x27\x1c", ("application/x-7z-compressed",)),
        (rb"Rar!\x1a\x07", ("application/vnd.rar", "application/x-rar-compressed")),
        (rb"%PDF-", ("application/pdf",)),
        (rb"PK\x03\x04", ("application/zip", "application/x-zip-compressed")),
        (rb"\x1f\x8b\x08", ("application/gzip", "application/x-gzip")),
        (rb"\x28\xb5\x2f\xfd", ("application/zstd",)),
        (rb"\xfd7zXZ\x00", ("application/x-xz",)),
        (rb"BZh[1-9](?:1AY&SY|\x17rE8P\x90)", ("application/x-bzip2",)),
        (rb"MSCF\x00\x00\x00\x00", ("application/vnd.ms-cab-compressed",)),
    ))
SNIFF_BYTES = 10  # enough for every magic above (the longest: bzip2's)


def media_type(content_type: str | None) -> str:
    """``Application/PDF; name=x`` -> ``application/pdf``; "" when there is none."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def sniffed_media_types(head: bytes) -> tuple[str, ...]:
    """The media types the body's first bytes say it is, or ()."""
    for magic, types in MAGIC_MEDIA_TYPES:
        if magic.match(head):
            return types
    return ()


def _regex(pattern: str) -> str:
    return ".*".join(re.escape(piece) for piece in pattern.split("*"))


class WithholdRule:
    """The withhold patterns of one host, compiled into one anchored regex."""

    __slots__ = ("_regex", "patterns")

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = tuple(sorted(set(patterns)))
        self._regex = re.compile("|".join(f"(?:{_regex(p)})" for p in self.patterns))

    def __repr__(self) -> str:
        return f"<WithholdRule {', '.join(self.patterns)}>"

    def matching(self, media: str) -> str | None:
        """The first pattern that matches ``media`` (lower case, no parameters), or None."""
        if not media or not self._regex.fullmatch(media):
            return None
        return next(p for p in self.patterns if re.fullmatch(_regex(p), media))

    def declared(self, content_type: str | None) -> str | None:
        """The pattern the answer's Content-Type matches, or None.

        Several Content-Type fields arrive joined by ", ": each is matched (a client may take
        either), so a listed type cannot hide behind a harmless one.
        """
        if content_type and "," in content_type:
            for part in content_type.split(","):
                if found := self.matching(media_type(part)):
                    return found
            return None
        return self.matching(media_type(content_type))

    def sniffed(self, head: bytes) -> str | None:
        """The pattern the media type named by the body's first bytes matches, or None."""
        for media in sniffed_media_types(head):
            if found := self.matching(media):
                return found
        return None


@lru_cache(maxsize=1024)
def rule_for(patterns: frozenset[str]) -> WithholdRule | None:
    """One shared rule per set of patterns (a wildcard host adds its suffixes' at request)."""
    return WithholdRule(patterns) if patterns else None


def pattern_covers(new: str, old: str) -> bool:
    """Does pattern ``new`` withhold at least what ``old`` did? (For `policy diff`.)"""
    if new in (old, "*/*"):
        return True
    return "*" not in old and re.fullmatch(_regex(new), old) is not None


def parse_withhold(node: yaml.Node, path: str, checker: NodeChecker) -> tuple[str, ...]:
    """A destination's ``withhold:``: a non-empty list of media types or globs."""
    listed = checker.strings(node, path, "a list of media types")
    if listed == [] and isinstance(node, yaml.SequenceNode) and not node.value:
        checker.report(node, path, "must name at least one media type; leave it out to "
                                   "withhold nothing")
    found = []
    for item_path, item, text in listed or ():
        pattern = text.strip().lower()
        if not MEDIA_PATTERN.fullmatch(pattern):
            checker.report(item, item_path,
                           f"invalid media type {_shown(text)}: write type/subtype without "
                           'parameters, with "*" for any run of characters, e.g. '
                           'application/pdf or "application/*zip*"')
            continue
        found.append(pattern)
    return tuple(dict.fromkeys(found))


def _shown(text: str) -> str:
    return json.dumps(text if len(text) <= 100 else text[:100] + "...", ensure_ascii=False)
