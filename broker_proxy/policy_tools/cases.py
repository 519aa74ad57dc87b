"""Policy test files (``*.policy-test.yaml``): what they hold and how a case is read.

```yaml
policy: example.yaml            # optional; default: this file's name without ".policy-test"
cases:
  - name: the bot reads an acme issue
    agent: research-bot
    method: GET                 # default GET
    url: https://api.github.com/repos/acme/widgets/issues/1
    secret: github              # put this secret's placeholder in the request ...
    in: header                  # ... here: header (default), query, body, basic or sigv4
    expect: inject github       # or: allow without secret | refuse CODE
  - name: the bot calls an MCP tool (the body and Mcp-* headers are built: protocol_cases.py)
    agent: research-bot
    url: https://mcp.tracker.example.com/mcp
    secret: tracker
    mcp: {tool: get_issue, arguments: {number: 7}}  # or graphql: {query: ..., operation_name: X}
    expect: inject tracker
```

A case is strict: an unknown key is an error, so a misspelt ``expect`` cannot pass silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from broker_proxy.policy_tools.protocol_cases import (
    ProtocolCaseError,
    graphql_request,
    mcp_request,
)
from broker_proxy.policy_tools.request_builder import PLACES

SUFFIX = ".policy-test.yaml"
_CASE_KEYS = frozenset({"name", "agent", "method", "url", "secret", "in", "header", "aws",
                        "grant", "approved", "headers", "body", "expect", "mcp", "graphql"})
_FILE_KEYS = frozenset({"policy", "cases"})
_EXPECT = re.compile(r"\s*(?:(inject)\s+(?P<names>[\w.,\s-]+?)|(allow) without secrets?"
                     r"|(refuse)\s+(?P<code>[a-z0-9_]+))\s*")


class TestFileError(ValueError):
    """A test file that cannot be read; the message starts with FILE:LINE."""


@dataclass(frozen=True, slots=True)
class Expectation:
    outcome: str  # "inject", "allow" or "refuse"
    secrets: tuple[str, ...] = ()  # for "inject": the secrets swapped in, sorted
    code: str = ""  # for "refuse": the stable error code

    def __str__(self) -> str:
        if self.outcome == "inject":
            return "inject " + ", ".join(self.secrets)
        if self.outcome == "allow":
            return "allow without secret"
        return f"refuse {self.code}"


@dataclass(frozen=True, slots=True)
class TestCase:
    name: str
    line: int
    agent: str
    method: str
    url: str
    expect: Expectation
    secret: str | None = None
    place: str = "header"
    header: str | None = None
    aws_service: str = "s3"
    aws_region: str = "us-east-1"
    grant: tuple[str, ...] | None = None
    approved: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True, slots=True)
class TestFile:
    path: Path
    policy: Path
    cases: tuple[TestCase, ...]


def parse_expectation(text: str) -> Expectation | None:
    match = _EXPECT.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        return None
    if match.group(1):
        names = tuple(sorted(n for n in re.split(r"[\s,]+", match.group("names")) if n))
        return Expectation("inject", secrets=names)
    if match.group(3):
        return Expectation("allow")
    return Expectation("refuse", code=match.group("code"))


def read_test_file(path: Path) -> TestFile:
    try:
        text = path.read_text(encoding="utf-8")
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except (OSError, UnicodeDecodeError) as error:
        raise TestFileError(f"{path}:0: cannot read: {error}") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = mark.line + 1 if mark else 0
        raise TestFileError(f"{path}:{line}: invalid YAML") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise TestFileError(f"{path}:1: expected a mapping with a list under cases:")
    unknown = sorted(set(data) - _FILE_KEYS)
    if unknown:
        raise TestFileError(f"{path}:1: unknown key {unknown[0]!r}; use policy and cases")
    policy_name = data.get("policy") or path.name.removesuffix(SUFFIX) + ".yaml"
    if not isinstance(policy_name, str):
        raise TestFileError(f"{path}:1: policy: expected a file name")
    case_nodes = next(v for k, v in root.value if k.value == "cases").value
    cases = []
    seen: set[str] = set()
    for item, node in zip(data["cases"], case_nodes, strict=True):
        case = _case(item, node.start_mark.line + 1, path)
        if case.name in seen:
            raise TestFileError(f"{path}:{case.line}: duplicate case name {case.name!r}")
        seen.add(case.name)
        cases.append(case)
    return TestFile(path=path, policy=(path.parent / policy_name), cases=tuple(cases))


def _case(item: object, line: int, path: Path) -> TestCase:
    def fail(message: str) -> TestFileError:
        return TestFileError(f"{path}:{line}: {message}")

    if not isinstance(item, dict):
        raise fail("a case is a mapping with name, agent, url and expect")
    unknown = sorted(set(item) - _CASE_KEYS)
    if unknown:
        raise fail(f"unknown key {unknown[0]!r} in a case")
    for key in ("name", "agent", "url", "expect"):
        if not isinstance(item.get(key), str) or not item[key]:
            raise fail(f"{key}: expected a string")
    expect = parse_expectation(item["expect"])
    if expect is None:
        raise fail(f"expect: {item['expect']!r} is not 'inject SECRET', "
                   "'allow without secret' or 'refuse CODE'")
    place = item.get("in", "header")
    if place not in PLACES:
        raise fail(f"in: {place!r} is not one of {', '.join(PLACES)}")
    grant = item.get("grant")
    if grant is not None and (not isinstance(grant, list)
                              or not all(isinstance(n, str) for n in grant)):
        raise fail("grant: expected a list of secret names")
    headers = item.get("headers") or {}
    if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise fail("headers: expected a mapping of names to string values")
    aws = item.get("aws") or {}
    if not isinstance(aws, dict) or set(aws) - {"service", "region"}:
        raise fail("aws: expected {service: NAME, region: NAME}")
    for key in ("secret", "header", "body", "method"):
        if key in item and not isinstance(item[key], str):
            raise fail(f"{key}: expected a string")
    if "approved" in item and not isinstance(item["approved"], bool):
        raise fail("approved: expected true or false")
    method, body = item.get("method", "GET"), item.get("body", "")
    protocol = [key for key in ("mcp", "graphql") if key in item]
    if protocol:
        if len(protocol) > 1 or "body" in item:
            raise fail(f"{protocol[0]}: give one of mcp, graphql and body")
        try:
            built, body = (mcp_request if protocol[0] == "mcp" else graphql_request)(
                item[protocol[0]])
        except ProtocolCaseError as error:
            raise fail(str(error)) from None
        headers = {**built, **headers}  # the case's own headers win
        method = item.get("method", "POST")
    return TestCase(
        name=item["name"], line=line, agent=item["agent"], method=method,
        url=item["url"], expect=expect, secret=item.get("secret"), place=place,
        header=item.get("header"), aws_service=str(aws.get("service", "s3")),
        aws_region=str(aws.get("region", "us-east-1")),
        grant=tuple(grant) if grant is not None else None,
        approved=item.get("approved", True), headers=dict(headers), body=body,
    )


def find_test_files(paths: list[Path]) -> list[Path]:
    """Files as given; directories give their ``*.policy-test.yaml``, sorted."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(path.glob("*" + SUFFIX)) if path.is_dir() else [path])
    return found
