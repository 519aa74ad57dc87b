"""Reading where a secret may go: a destination's host, scheme, port, methods and paths, and
the host lists that share its host syntax (``egress.allow``).

The matcher that uses them is destinations.py; this only turns the file's nodes into
``Destination`` values, reporting each problem through the loader's checker.
"""

from __future__ import annotations

import re

import yaml

from broker_proxy.policy.approval_fields import APPROVAL_PREVIEWS
from broker_proxy.policy.aws_fields import parse_aws_scope
from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.destinations import (
    GlobError,
    HostError,
    canonical_host_pattern,
    check_path_glob,
)
from broker_proxy.policy.field_checker import join_path, quoted, suggestion
from broker_proxy.policy.http_methods import REGISTERED_METHODS
from broker_proxy.policy.media_types import parse_withhold
from broker_proxy.policy.model import DEFAULT_METHODS, NEVER_METHODS, Destination
from broker_proxy.policy.path_reach import unreachable_reason
from broker_proxy.policy.protocol_rules import parse_graphql, parse_mcp
from broker_proxy.policy.spec import PORT_MAX, PORT_MIN

DEFAULT_PORTS = {"https": 443, "http": 80}

METHOD_PATTERN = r"^[A-Z][A-Z0-9_-]*$"
_METHOD = re.compile(METHOD_PATTERN)
_UNFIT_PATH_CHAR = re.compile(r"[?#]|[^!-~]")  # also a space, a control or non-ASCII character
_WHY_NEVER = "it could echo the injected secret back or tunnel it"


def parse_destination(node: yaml.Node, path: str, checker: NodeChecker) -> Destination | None:
    """One item of a secret's ``destinations``; None when anything in it is wrong."""
    before = len(checker.issues)
    fields = checker.fields(node, path, "destination", node)
    if fields is None:
        return None
    host = None
    if "host" in fields:
        host = parse_host_pattern(fields["host"][1], join_path(path, "host"), checker)
    scheme, port = _scheme_and_port(fields, path, checker)
    methods = DEFAULT_METHODS
    if "methods" in fields:
        methods = _methods(fields["methods"][1], join_path(path, "methods"), checker)
    paths: tuple[str, ...] = ()
    if "paths" in fields:
        paths = _paths(fields["paths"][1], join_path(path, "paths"), checker)
    aws = parse_aws_scope(fields["aws"][1], join_path(path, "aws"), checker) if "aws" in fields \
        else None
    preview = "full"
    if "approval_preview" in fields:
        preview = checker.choice(fields["approval_preview"][1], join_path(path, "approval_preview"),
                                 "approval_preview", APPROVAL_PREVIEWS,
                                 "use full, headers or none") or "full"
    withhold = parse_withhold(fields["withhold"][1], join_path(path, "withhold"), checker) \
        if "withhold" in fields else ()
    mcp = parse_mcp(fields["mcp"][1], join_path(path, "mcp"), checker) if "mcp" in fields \
        else None
    graphql = parse_graphql(fields["graphql"][1], join_path(path, "graphql"), checker) \
        if "graphql" in fields else None
    if host is None or len(checker.issues) > before:
        return None
    return Destination(scheme=scheme, host=host, port=port, methods=methods, paths=paths,
                       aws=aws, approval_preview=preview, withhold=withhold, mcp=mcp,
                       graphql=graphql)


def _scheme_and_port(fields: dict[str, tuple[yaml.Node, yaml.Node]], path: str,
                     checker: NodeChecker) -> tuple[str, int]:
    scheme = "https"
    if "scheme" in fields:
        scheme = checker.choice(fields["scheme"][1], join_path(path, "scheme"), "scheme",
                                DEFAULT_PORTS, "use https or http") or "https"
    port = DEFAULT_PORTS.get(scheme, 443)
    if "port" in fields:
        port_node = fields["port"][1]
        given = checker.integer(port_node, join_path(path, "port"))
        if given is not None and not PORT_MIN <= given <= PORT_MAX:
            checker.report(port_node, join_path(path, "port"),
                           f"must be between {PORT_MIN} and {PORT_MAX}")
        port = given or port
    return scheme, port


def parse_host_pattern(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
    """A host name or ``*.`` pattern in its canonical form."""
    raw = checker.string(node, path, "a host name")
    if raw is None:
        return None
    try:
        return canonical_host_pattern(raw)
    except HostError as error:
        checker.report(node, path, str(error))
        return None


def parse_host_patterns(node: yaml.Node, path: str, checker: NodeChecker) -> tuple[str, ...]:
    """A list of host patterns, canonical, without repeats, in the file's order."""
    hosts = checker.strings(node, path, "a list of host names") or []
    found = (parse_host_pattern(item, item_path, checker) for item_path, item, _ in hosts)
    return tuple(dict.fromkeys(host for host in found if host is not None))


def _methods(node: yaml.Node, path: str, checker: NodeChecker) -> frozenset[str]:
    listed = checker.strings(node, path)
    if listed == []:
        checker.report(node, path, "must name at least one method; leave it out for the default")
    methods = set()
    for item_path, item, value in listed or ():
        method = value.upper()
        if method in NEVER_METHODS:
            checker.report(item, item_path, f"{method} is never allowed: {_WHY_NEVER}")
        elif not _METHOD.fullmatch(method):
            checker.report(item, item_path, f"invalid method {quoted(value)}")
        elif method not in REGISTERED_METHODS and method not in NEVER_METHODS:
            checker.report(item, item_path, f"unknown HTTP method {quoted(value)} (not in the "
                           "IANA method registry)" + suggestion(method, REGISTERED_METHODS))
        else:
            methods.add(method)
    return frozenset(methods)


def _paths(node: yaml.Node, path: str, checker: NodeChecker) -> tuple[str, ...]:
    listed = checker.strings(node, path)
    if listed == []:
        checker.report(node, path, "must name at least one path; leave it out to allow every path")
    globs = []
    for item_path, item, glob in listed or ():
        if _UNFIT_PATH_CHAR.search(glob):
            # Paths are matched without the query string, so a "?" here would never match.
            checker.report(item, item_path, f"invalid path pattern {quoted(glob)}: use printable "
                                            'characters without spaces, "?" or "#"')
            continue
        try:
            check_path_glob(glob)
        except GlobError as error:
            checker.report(item, item_path, str(error))
            continue
        if problem := unreachable_reason(glob):
            checker.report(item, item_path, f"path pattern {quoted(glob)} {problem}")
            continue
        globs.append(glob)
    return tuple(dict.fromkeys(globs))
