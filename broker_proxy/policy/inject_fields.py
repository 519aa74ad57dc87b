"""Reading the fields that say how a secret goes into a request: header templates, Basic,
per-grant placeholder formats (the OAuth2 and client-certificate fields are oauth2_mtls_fields).

Kept apart from loader.py so the loader stays a walk over the file; the checker passed in is
the loader's, so every problem here is reported with the same FILE:LINE:COL form.
"""

from __future__ import annotations

import json
import math
import re
from datetime import timedelta
from typing import TYPE_CHECKING

import yaml

from broker_proxy.durations import DurationError, parse_duration
from broker_proxy.policy.model import HeaderTemplate, PlaceholderFormat

if TYPE_CHECKING:
    from broker_proxy.policy.checking import NodeChecker

# RFC 9110 token characters: a header name the proxy writes must be one an upstream parses.
HEADER_NAME_PATTERN = r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$"
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
# Headers the proxy never sets: they route the request, frame the body, or carry the
# agent's own proxy credentials (see request_scan.NEVER_INJECT_HEADERS).
FORBIDDEN_TEMPLATE_HEADERS = frozenset(
    {"host", "cookie", "referer", "origin", "forwarded", "via", "x-forwarded-for",
     "x-forwarded-host", "proxy-authorization", "proxy-connection", "content-length",
     "transfer-encoding", "connection", "upgrade", "te", "trailer", "keep-alive"}
)
SECRET_SLOT, BASIC_SLOT = "{secret}", "{basic}"
# Per-grant placeholders must be unguessable from one another: at least this many random bits.
MIN_FORMAT_BITS = 96
FORMAT_PREFIX_MIN, FORMAT_PREFIX_MAX = 2, 32
FORMAT_LENGTH_MAX = 256
USERNAME_MAX = 256


def _quoted(value: str) -> str:
    return json.dumps(value if len(value) <= 100 else value[:100] + "...", ensure_ascii=False)


def _printable(text: str) -> bool:
    return all("!" <= char <= "~" for char in text)


def parse_inject(node: yaml.Node, path: str, places: tuple[str, ...],
                 checker: NodeChecker) -> tuple[frozenset[str], tuple[HeaderTemplate, ...]]:
    """``inject`` items: a place name, or a mapping ``{header, value, overwrite}``."""
    chosen: set[str] = set()
    templates: list[HeaderTemplate] = []
    listed = checker.items(node, path, "a list of places or header templates")
    if not listed and isinstance(node, yaml.SequenceNode):
        checker.report(node, path, "must name at least one place")
    seen_headers: dict[str, str] = {}
    for item_path, item in listed:
        if isinstance(item, yaml.MappingNode):
            template = _template(item, item_path, checker)
            if template is None:
                continue
            lowered = template.header.lower()
            if lowered in seen_headers:
                checker.report(item, item_path, f"header {_quoted(template.header)} is already "
                                                f"set by {seen_headers[lowered]}")
                continue
            seen_headers[lowered] = item_path
            templates.append(template)
            continue
        value = checker.string(item, item_path, "a place or a header template")
        if value is None:
            continue
        if value in places:
            chosen.add(value)
        else:
            # A header the proxy sets itself is a mapping item instead: {header:, value:}.
            checker.report(item, item_path, f"unknown place {_quoted(value)}: use "
                                            f"{', '.join(places[:-1])} or {places[-1]}")
    return frozenset(chosen), tuple(templates)


def _template(node: yaml.Node, path: str, checker: NodeChecker) -> HeaderTemplate | None:
    before = len(checker.issues)
    fields = checker.fields(node, path, "header_template", node)
    if fields is None:
        return None
    header = value = None
    if "header" in fields:
        header_node = fields["header"][1]
        header = checker.string(header_node, f"{path}.header", "a header name")
        if header is not None and not _HEADER_NAME.fullmatch(header):
            checker.report(header_node, f"{path}.header", f"invalid header name {_quoted(header)}")
        elif header is not None and header.lower() in FORBIDDEN_TEMPLATE_HEADERS:
            checker.report(header_node, f"{path}.header",
                           f"the proxy never sets {header}: it routes or frames the request")
    if "value" in fields:
        value_node = fields["value"][1]
        value = checker.string(value_node, f"{path}.value")
        slots = 0 if value is None else value.count(SECRET_SLOT) + value.count(BASIC_SLOT)
        if value is not None and slots != 1:
            checker.report(value_node, f"{path}.value",
                           'must hold "{secret}" (or "{basic}" with basic:) exactly once, '
                           'e.g. "Bearer {secret}"')
        elif value is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            checker.report(value_node, f"{path}.value", "must not hold control characters")
    overwrite = False
    if "overwrite" in fields:
        overwrite_node = fields["overwrite"][1]
        if checker.kind(overwrite_node, f"{path}.overwrite", yaml.ScalarNode, "true or false"):
            if overwrite_node.tag != "tag:yaml.org,2002:bool":
                checker.report(overwrite_node, f"{path}.overwrite", "expected true or false")
            else:
                overwrite = overwrite_node.value.lower() in ("true", "yes", "on")
    if header is None or value is None or len(checker.issues) > before:
        return None
    return HeaderTemplate(header=header, value=value, overwrite=overwrite)


def parse_basic(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    """``basic: {username: NAME}``: the secret's value is the password."""
    fields = checker.fields(node, path, "basic", node)
    if fields is None or "username" not in fields:
        return None
    username_node = fields["username"][1]
    username = checker.string(username_node, f"{path}.username", "a user name")
    if username is None:
        return None
    # RFC 7617 section 2: the user-id cannot contain a colon; controls would break the header.
    if not username or ":" in username or len(username) > USERNAME_MAX or any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in username):
        checker.report(username_node, f"{path}.username",
                       f"must be 1 to {USERNAME_MAX} characters without a colon or control "
                       "characters")
        return None
    return username


def parse_placeholder_format(node: yaml.Node, path: str,
                             checker: NodeChecker) -> PlaceholderFormat | None:
    before = len(checker.issues)
    fields = checker.fields(node, path, "placeholder_format", node)
    if fields is None:
        return None
    prefix = alphabet = None
    length = None
    if "prefix" in fields:
        prefix_node = fields["prefix"][1]
        prefix = checker.string(prefix_node, f"{path}.prefix")
        # The prefix is what the scanner looks for first: it has to be there and be distinctive.
        if prefix is not None and (not _printable(prefix)
                                   or not FORMAT_PREFIX_MIN <= len(prefix) <= FORMAT_PREFIX_MAX
                                   or "{" in prefix):
            checker.report(prefix_node, f"{path}.prefix",
                           f"must be {FORMAT_PREFIX_MIN} to {FORMAT_PREFIX_MAX} printable ASCII "
                           'characters without spaces or "{"')
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    if "alphabet" in fields:
        alphabet_node = fields["alphabet"][1]
        given = checker.string(alphabet_node, f"{path}.alphabet")
        if given is not None and (not _printable(given) or len(set(given)) != len(given)
                                  or len(given) < 2):
            checker.report(alphabet_node, f"{path}.alphabet",
                           "must be at least 2 distinct printable ASCII characters")
        elif given is not None:
            alphabet = given
    if "length" in fields:
        length_node = fields["length"][1]
        length = checker.integer(length_node, f"{path}.length")
        if length is not None and not 1 <= length <= FORMAT_LENGTH_MAX:
            checker.report(length_node, f"{path}.length",
                           f"must be between 1 and {FORMAT_LENGTH_MAX}")
            length = None
    if prefix is None or length is None or len(checker.issues) > before:
        return None
    bits = length * math.log2(len(alphabet))
    if bits < MIN_FORMAT_BITS:
        checker.report(fields["length"][1], f"{path}.length",
                       f"{length} characters of a {len(alphabet)}-character alphabet give "
                       f"{bits:.0f} random bits; at least {MIN_FORMAT_BITS} are needed")
        return None
    return PlaceholderFormat(prefix=prefix, alphabet=alphabet, length=length)


def parse_duration_field(node: yaml.Node, path: str, checker: NodeChecker) -> timedelta | None:
    text = checker.string(node, path, "a duration such as 5m")
    if text is None:
        return None
    try:
        duration = parse_duration(text)
    except DurationError as error:
        checker.report(node, path, str(error))
        return None
    if duration <= timedelta(0):
        checker.report(node, path, "must be longer than 0s")
        return None
    return duration
