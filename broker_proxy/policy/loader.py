"""Read a version 1 policy file into the immutable model, or say everything that is wrong with it.

The YAML is composed into nodes (never constructed into Python objects), so every message
carries the line and column the operator has to fix, and no YAML tag can make the parser build
anything but plain values. Every problem in the file is collected before raising: an operator
fixing a policy should see the whole list at once, as ``FILE:LINE:COL: path.to.field: message``.
"""

from __future__ import annotations

import difflib
import gc
import hashlib
import ipaddress
import json
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import yaml

from broker_proxy.durations import DurationError, parse_duration
from broker_proxy.policy.approval_fields import (
    APPROVAL_PREVIEWS,
    DEFAULT_APPROVAL_TIMEOUT,
    parse_approval_timeout,
    parse_approval_webhook,
    parse_secret_approval,
)
from broker_proxy.policy.aws_fields import (
    check_sigv4_secret,
    parse_aws_scope,
    parse_sign,
)
from broker_proxy.policy.chat_rules import parse_chat
from broker_proxy.policy.destinations import (
    GlobError,
    HostError,
    canonical_host_pattern,
    check_path_glob,
)
from broker_proxy.policy.http_methods import REGISTERED_METHODS
from broker_proxy.policy.inject_fields import (
    parse_basic,
    parse_duration_field,
    parse_inject,
    parse_placeholder_format,
)
from broker_proxy.policy.limit_fields import (
    parse_budget,
    parse_hosted_tools,
    parse_models,
    parse_prices,
    parse_rate,
)
from broker_proxy.policy.media_types import parse_withhold
from broker_proxy.policy.model import (
    BASIC_PLACE,
    DEFAULT_METHODS,
    INJECT_PLACES,
    NEVER_METHODS,
    AgentPolicy,
    Destination,
    HeaderTemplate,
    OAuth2Config,
    PlaceholderFormat,
    Policy,
    Price,
    SecretPolicy,
)
from broker_proxy.policy.oauth2_mtls_fields import (
    covers_token_url,
    parse_client_cert,
    parse_oauth2,
)
from broker_proxy.policy.path_reach import unreachable_reason
from broker_proxy.policy.protocol_rules import parse_graphql, parse_mcp
from broker_proxy.policy.resolve_pins import SPELLING as PIN_SPELLING
from broker_proxy.policy.resolve_pins import PinError, ResolvePins
from broker_proxy.policy.spec import (
    ENV_PATTERN,
    FIELDS,
    NAME_PATTERN,
    PLACEHOLDER_MAX,
    PLACEHOLDER_MIN,
    PORT_MAX,
    PORT_MIN,
    REQUIRED,
    VERSION,
)

DEFAULT_MAX_TTL = timedelta(hours=1)
DEFAULT_PORTS = {"https": 443, "http": 80}

METHOD_PATTERN = r"^[A-Z][A-Z0-9_-]*$"
_NAME = re.compile(NAME_PATTERN)
_ENV = re.compile(ENV_PATTERN)
_ENV_SOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # env:VAR reads any variable name
_METHOD = re.compile(METHOD_PATTERN)
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_UNFIT_PATH_CHAR = re.compile(r"[?#]|[^!-~]")  # also a space, a control or non-ASCII character

_YAML = "tag:yaml.org,2002:"
_STR, _INT, _NULL, _MERGE = _YAML + "str", _YAML + "int", _YAML + "null", _YAML + "merge"
_STANDARD_TAGS = frozenset(
    _YAML + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "timestamp")
)
_TYPE_NAMES = {
    _INT: "an integer", _YAML + "float": "a number", _YAML + "bool": "a boolean",
    _NULL: "nothing", _YAML + "timestamp": "a date", _STR: "a string",
}
# The order messages list them in; the set itself is the model's INJECT_PLACES.
_INJECT_ORDER = tuple(sorted(INJECT_PLACES, key=("header", "query", "body").index))
_FREE_TEXT = ("a string", "a variable name")
_WHY_NEVER = "it could echo the injected secret back or tunnel it"


class PolicyIssue(NamedTuple):
    """One problem, pointing at the line and column (1-based) where the operator fixes it."""

    file: str
    line: int
    column: int
    field_path: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.field_path}: {self.message}"


class PolicyError(Exception):
    """A policy that cannot be used; ``issues`` lists every problem found, in file order."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; Policy.digest is the sha256 of the file's bytes."""
    return load_policy_and_tree(path)[0]


def load_policy_and_tree(path: str | Path) -> tuple[Policy, yaml.Node]:
    """``load_policy``, plus the composed YAML it was read from (the linter's line numbers).

    A large file is composed once for both: composing is a third of a large policy's load.
    """
    return _load_bytes(read_policy_bytes(path), str(path))


def read_policy_bytes(path: str | Path) -> bytes:
    """The file's bytes, or the PolicyError ``load_policy`` raises when it cannot be read."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise PolicyError(
            [PolicyIssue(str(path), 0, 0, "policy", f"cannot read file: {reason}")]
        ) from None


def load_policy_bytes(data: bytes, source: str) -> Policy:
    """``load_policy`` of bytes already read from ``source`` (the reload worker gets them on
    its stdin, so it reads exactly the content the watcher saw)."""
    return _load_bytes(data, source)[0]


def _load_bytes(data: bytes, source: str) -> tuple[Policy, yaml.Node]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyError([PolicyIssue(
            source, 0, 0, "policy", f"cannot read file: not UTF-8 (byte {error.start})"
        )]) from None
    return _load(text, source, hashlib.sha256(data).hexdigest())


def load_policy_text(text: str, source: str = "<policy>") -> Policy:
    """Validate policy text that did not come from a file (tests, the admin API, stdin)."""
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return _load(text, source, digest)[0]


# Objects a load may leave alive before they are moved out of the collector's sight.
_FREEZE_ABOVE = 200_000


@contextmanager
def collector_paused() -> Iterator[None]:
    """Keep Python's cycle collector out of one large load, and restore it as it was.

    Loading allocates millions of nodes and model objects that all live until the load ends;
    each full collection in between walks every one of them again, which tripled the time of a
    100,000-secret policy. After a large load what is alive is frozen (``gc.freeze``): the
    policy lives until the next reload and holds no reference cycles, so reference counting
    frees it, and otherwise the first full collection after the load (on the proxy's event
    loop, as like as not) would walk all of it, and again every few million allocations after.
    The price is that cyclic garbage alive at that moment is never collected: once per large
    load, and only what happened to be in flight.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if gc.get_count()[0] > _FREEZE_ABOVE:
            gc.freeze()
        if was_enabled:
            gc.enable()


def _load(text: str, source: str, digest: str) -> tuple[Policy, yaml.Node]:
    with collector_paused():
        checker = _Checker(source)
        root = _compose(text, checker)
        policy = _build_policy(root, checker)
        chat = parse_chat(root, checker)  # chat_rules.py: the `chat:` section
    if checker.issues or policy is None or root is None:
        raise PolicyError(sorted(checker.issues, key=lambda issue: (issue.line, issue.column)))
    return Policy(
        secrets=policy.secrets, agents=policy.agents, egress_allow=policy.egress_allow,
        allow_addresses=policy.allow_addresses, resolve=policy.resolve, source=source,
        digest=digest, approval_timeout=policy.approval_timeout,
        approval_webhook=policy.approval_webhook, prices=policy.prices,
        prices_as_of=policy.prices_as_of, chat=chat,
    ), root


# --- YAML to nodes -----------------------------------------------------------------------------


class _NodeLoader(yaml.SafeLoader):
    """SafeLoader that records anchors and aliases as problems while composing.

    An alias makes one node appear under two paths, so an edit in one place silently changes
    another; policies are short enough to write out.
    """

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.rejected: list[tuple[yaml.Mark, str]] = []

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node | None:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            self.rejected.append((event.start_mark, "YAML aliases (*name) are not supported; "
                                                    "write the value out"))
        elif getattr(event, "anchor", None) is not None:
            self.rejected.append((event.start_mark, "YAML anchors (&name) are not supported; "
                                                    "write the value out"))
        return super().compose_node(parent, index)


def _compose_fast(text: str) -> yaml.Node | bool | None:
    """libyaml's composer, where it is there and can be trusted with this text; else False.

    It is ten times faster than the pure-Python one on a large policy and gives nodes the same
    line and column marks. It cannot see anchors, so a text that may hold one ("&") goes the
    slow way, as does one the pure-Python reader would refuse; so does any error, to be
    reported in the pure-Python loader's words.
    """
    if not getattr(yaml, "__with_libyaml__", False) or "&" in text \
            or yaml.reader.Reader.NON_PRINTABLE.search(text):
        return False
    loader = yaml.CSafeLoader(text)
    try:
        return loader.get_single_node()
    except (yaml.YAMLError, RecursionError):
        return False
    finally:
        loader.dispose()


def _compose(text: str, checker: _Checker) -> yaml.Node | None:
    fast = _compose_fast(text)
    if fast is not False:
        return fast
    loader = None
    try:
        # The reader rejects control characters as soon as it is built, hence inside the try.
        loader = _NodeLoader(text)
        root = loader.get_single_node()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        parts = [" ".join(part.split()) for part in (error.context, error.problem) if part]
        checker.report(mark, "", "invalid YAML: " + ", ".join(parts))
        raise PolicyError(checker.issues) from None
    except yaml.reader.ReaderError as error:
        position = error.position
        line = text.count("\n", 0, position)
        column = position - (text.rfind("\n", 0, position) + 1)
        checker.report(yaml.Mark("", position, line, column, None, None), "",
                       f"invalid YAML: control character U+{error.character:04X} is not allowed")
        raise PolicyError(checker.issues) from None
    except yaml.YAMLError as error:
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "",
                       "invalid YAML: " + " ".join(str(error).split()))
        raise PolicyError(checker.issues) from None
    except RecursionError:
        # The composer recurses per level; "[[[[..." thousands deep must not be a traceback.
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "", "invalid YAML: nested too deeply")
        raise PolicyError(checker.issues) from None
    finally:
        if loader is not None:
            loader.dispose()
    for mark, message in loader.rejected:
        checker.report(mark, "", message)
    return root


# --- typed access to nodes, collecting problems ------------------------------------------------


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _quoted(value: str) -> str:
    shown = value if len(value) <= 100 else value[:100] + "..."
    return json.dumps(shown, ensure_ascii=False)


def _suggestion(name: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.7)
    return f'; did you mean "{close[0]}"?' if close else ""


@dataclass
class _Checker:
    source: str
    issues: list[PolicyIssue] = field(default_factory=list)

    def report(self, where: yaml.Node | yaml.Mark, path: str, message: str) -> None:
        mark = where.start_mark if isinstance(where, yaml.Node) else where
        self.issues.append(
            PolicyIssue(self.source, mark.line + 1, mark.column + 1, path or "policy", message)
        )

    def standard(self, node: yaml.Node, path: str) -> bool:
        """Only plain YAML types: a custom tag would mean something this loader ignores."""
        if node.tag in _STANDARD_TAGS:
            return True
        tag = "!!" + node.tag.removeprefix(_YAML) if node.tag.startswith(_YAML) else node.tag
        self.report(node, path, f"unsupported YAML tag {_quoted(tag)}; use plain values")
        return False

    def kind(self, node: yaml.Node, path: str, node_type: type, expected: str) -> bool:
        # The set test first: this runs for every node of the file.
        if node.tag not in _STANDARD_TAGS and not self.standard(node, path):
            return False
        if isinstance(node, node_type):
            return True
        got = _TYPE_NAMES.get(node.tag, "a list" if isinstance(node, yaml.SequenceNode)
                              else "a mapping")
        self.report(node, path, f"expected {expected}, got {got}")
        return False

    def string(self, node: yaml.Node, path: str, expected: str = "a string") -> str | None:
        if not self.kind(node, path, yaml.ScalarNode, expected):
            return None
        if node.tag != _STR:
            # YAML reads NO, 1.5 or 12345678 as other types; quoting helps where any text may go.
            hint = "; put it in quotes" if node.tag != _NULL and expected in _FREE_TEXT else ""
            self.report(node, path,
                        f"expected {expected}, got {_TYPE_NAMES.get(node.tag, '?')}{hint}")
            return None
        return node.value

    def integer(self, node: yaml.Node, path: str) -> int | None:
        if not self.kind(node, path, yaml.ScalarNode, "an integer"):
            return None
        # Decimal only: YAML 1.1 would read "0443" as octal and "0x1bb" as hex.
        if node.tag != _INT or not _DECIMAL.fullmatch(node.value):
            self.report(node, path, f"expected an integer, got {_quoted(node.value)}")
            return None
        return int(node.value)

    def items(self, node: yaml.Node, path: str, expected: str) -> list[tuple[str, yaml.Node]]:
        """A sequence's items with their paths; ``expected`` names the list in messages."""
        if not self.kind(node, path, yaml.SequenceNode, expected):
            return []
        return [(f"{path}[{index}]", item) for index, item in enumerate(node.value)]

    def strings(self, node: yaml.Node, path: str,
                expected: str = "a list of strings") -> list[tuple[str, yaml.Node, str]] | None:
        """A list of strings as (path, node, value); None when it is not a list at all."""
        if not self.kind(node, path, yaml.SequenceNode, expected):
            return None
        found = []
        for item_path, item in self.items(node, path, expected):
            value = self.string(item, item_path)
            if value is not None:
                found.append((item_path, item, value))
        return found

    def entries(self, node: yaml.Node, path: str) -> list[tuple[str, yaml.Node, yaml.Node]]:
        """A mapping's (key, key node, value node) triples; duplicate and odd keys reported."""
        if not self.kind(node, path, yaml.MappingNode, "a mapping"):
            return []
        found: list[tuple[str, yaml.Node, yaml.Node]] = []
        first_line: dict[str, int] = {}
        for key, value in node.value:
            if key.tag == _MERGE:
                self.report(key, path, 'YAML merge keys ("<<") are not supported; '
                                       "write the fields out")
                continue
            if key.tag not in _STANDARD_TAGS and not self.standard(key, path):
                continue
            if not isinstance(key, yaml.ScalarNode) or key.tag == _NULL:
                self.report(key, path, "expected a plain name as the key")
                continue
            name = key.value
            if name in first_line:
                self.report(key, _join(path, name),
                            f"duplicate key {_quoted(name)} (first at line {first_line[name]})")
                continue
            first_line[name] = key.start_mark.line + 1
            found.append((name, key, value))
        return found

    def fields(self, node: yaml.Node, path: str, kind: str, where: yaml.Node
               ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """A fixed-field mapping of ``kind`` (spec.py); unknown fields (with a close suggestion)
        and missing required ones reported. ``where`` is the node a missing field is reported
        at."""
        if not self.kind(node, path, yaml.MappingNode, "a mapping"):
            return None
        known = FIELDS[kind]
        found: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for name, key, value in self.entries(node, path):
            if name not in known:
                self.report(key, _join(path, name),
                            f"unknown field {_quoted(name)}{_suggestion(name, known)}")
                continue
            found[name] = (key, value)
        for name in REQUIRED[kind]:
            if name not in found:
                self.report(where, path, f"missing required field {_quoted(name)}")
        return found

    def name(self, key: yaml.Node, path: str, what: str) -> bool:
        if _NAME.fullmatch(key.value):
            return True
        self.report(key, path, f"invalid {what} name {_quoted(key.value)}: start with a letter,"
                               ' then up to 63 letters, digits, "_", "." or "-"')
        return False


# --- the policy, section by section -----------------------------------------------------------


class _Sections(NamedTuple):
    secrets: dict[str, SecretPolicy]
    agents: dict[str, AgentPolicy]
    egress_allow: tuple[str, ...]
    allow_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    resolve: dict[tuple[str, int | None], tuple[str, int | None]]
    approval_timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT
    approval_webhook: str | None = None
    prices: tuple[tuple[str, Price], ...] = ()
    prices_as_of: str | None = None


def _build_policy(root: yaml.Node | None, checker: _Checker) -> _Sections | None:
    if root is None or (root.tag == _NULL and not root.value):
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "",
                       'the file is empty; a policy starts with "version: 1"')
        return None
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "version" and value.tag == _INT and _DECIMAL.fullmatch(value.value) \
                    and int(value.value) != VERSION:
                # Another version is another format: checking it against version 1 would
                # only produce noise, so this is the one thing said about it.
                checker.report(value, "version", f"unsupported version {value.value}: "
                                                 f"this broker-proxy reads version {VERSION}")
                return None
    top = checker.fields(root, "", "policy", root)
    if top is None:
        return None
    if "version" in top:
        checker.integer(top["version"][1], "version")

    def section(name: str) -> yaml.Node | None:
        # An empty section ("agents:" with everything under it commented out) means none.
        node = top[name][1] if name in top else None
        return None if node is None or node.tag == _NULL else node

    secret_names: set[str] = set()
    secrets_node = section("secrets")
    secrets = _secrets(secrets_node, checker, secret_names) if secrets_node else {}
    agents_node = section("agents")
    agents = _agents(agents_node, checker, secret_names) if agents_node else {}
    egress_allow: tuple[str, ...] = ()
    if (egress_node := section("egress")) is not None:
        egress = checker.fields(egress_node, "egress", "egress", egress_node) or {}
        if "allow" in egress:
            egress_allow = _host_patterns(egress["allow"][1], "egress.allow", checker)
    allow_addresses: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    resolve: dict[tuple[str, int | None], tuple[str, int | None]] = {}
    if (network_node := section("network")) is not None:
        network = checker.fields(network_node, "network", "network", network_node) or {}
        if "allow_addresses" in network:
            allow_addresses = _networks(network["allow_addresses"][1], checker)
        if "resolve" in network:
            resolve = _pins(network["resolve"][1], checker)
    # Per-request approval (approval_fields.py).
    approval_timeout = DEFAULT_APPROVAL_TIMEOUT
    if "approval_timeout" in top:
        approval_timeout = parse_approval_timeout(top["approval_timeout"][1],
                                                  "approval_timeout", checker)
    approval_webhook = None
    if "approval_webhook" in top:
        approval_webhook = parse_approval_webhook(top["approval_webhook"][1],
                                                  "approval_webhook", checker)
    prices, prices_as_of = parse_prices(top["prices"][1], "prices", checker) \
        if "prices" in top else ((), None)
    for name, secret in secrets.items():
        if secret.budget is not None and secret.budget.micro_usd is not None and not prices:
            checker.report(root, f"secrets.{name}.budget.cost_usd",
                           'a cost budget needs a "prices" table (USD per million tokens)')
    return _Sections(secrets, agents, egress_allow, allow_addresses, resolve, approval_timeout,
                     approval_webhook, prices, prices_as_of)


def _secrets(node: yaml.Node, checker: _Checker, names: set[str]) -> dict[str, SecretPolicy]:
    built: dict[str, SecretPolicy] = {}
    placeholders: list[tuple[str, str, yaml.Node, str]] = []
    env_owner: dict[str, str] = {}
    for name, key, value in checker.entries(node, "secrets"):
        path = _join("secrets", name)
        # Known even when its body is broken, so agents naming it get no second, false error.
        names.add(name)
        if not checker.name(key, path, "secret"):
            continue
        before = len(checker.issues)
        secret = _secret(name, key, value, path, checker)
        if secret is None or len(checker.issues) > before:
            continue
        fields = value.value
        where = next((v for k, v in fields if k.value == "placeholder"), key)
        placeholders.append((name, secret.placeholder, where, _join(path, "placeholder")))
        if secret.env is not None:
            env_node = next(v for k, v in fields if k.value == "env")
            if secret.env in env_owner:
                checker.report(env_node, _join(path, "env"),
                               f"{secret.env} already carries the placeholder of secret "
                               f"{_quoted(env_owner[secret.env])}")
                continue
            env_owner[secret.env] = name
        built[name] = secret
    _check_placeholders_apart(placeholders, checker)
    return built


# The shape of a default placeholder: no name holds a brace, so two different placeholders of
# this shape can never hold one another ("{{" begins each only at its start): only equal ones
# and placeholders of other shapes need comparing, which keeps a policy of 100,000 secrets O(n).
_DEFAULT_SHAPE = re.compile(r"\{\{secret:[A-Za-z][A-Za-z0-9_.-]{0,63}\}\}")


def _check_placeholders_apart(placeholders: list[tuple[str, str, yaml.Node, str]],
                              checker: _Checker) -> None:
    """One placeholder inside another would make the swap ambiguous: which secret was meant?

    Each placeholder is reported against the first earlier one it clashes with.
    """
    first_of: dict[str, int] = {}
    others: list[int] = []  # indices of placeholders not of the default shape
    for index, (_, placeholder, where, path) in enumerate(placeholders):
        clash = first_of.get(placeholder)
        if _DEFAULT_SHAPE.fullmatch(placeholder):
            earlier = others
        else:
            earlier = range(clash if clash is not None else index)
            others.append(index)
        for other_index in earlier:
            if clash is not None and other_index >= clash:
                break
            other = placeholders[other_index][1]
            if placeholder in other or other in placeholder:
                clash = other_index
                break
        first_of.setdefault(placeholder, index)
        if clash is None:
            continue
        other_name, other = placeholders[clash][0], placeholders[clash][1]
        if placeholder == other:
            checker.report(where, path, f"placeholder is already used by secret "
                                        f"{_quoted(other_name)}")
        else:
            checker.report(where, path, f"placeholder overlaps the placeholder of secret "
                                        f"{_quoted(other_name)}: neither may contain the other")


def _secret(name: str, key: yaml.Node, node: yaml.Node, path: str,
            checker: _Checker) -> SecretPolicy | None:
    fields = checker.fields(node, path, "secret", key)
    if fields is None:
        return None
    source = _source(fields["from"][1], _join(path, "from"), checker) if "from" in fields else None
    command: tuple[str, ...] | None = None
    if "command" in fields:
        command_key, command_node = fields["command"]
        if source is not None and source != "command":
            checker.report(command_key, _join(path, "command"),
                           'only used with "from: command"')
        elif source == "command":
            argv = checker.strings(command_node, _join(path, "command"))
            if argv == []:
                checker.report(command_node, _join(path, "command"),
                               "must name the program to run, e.g. [pass, show, github]")
            command = tuple(value for _, _, value in argv or ())
    elif source == "command":
        checker.report(key, path, 'missing required field "command" (from: command runs it)')
    placeholder = "{{secret:" + name + "}}"
    if "placeholder" in fields:
        placeholder = _placeholder(fields["placeholder"][1], _join(path, "placeholder"), checker)
    destinations: list[Destination] = []
    if "destinations" in fields:
        destinations_path = _join(path, "destinations")
        listed = checker.items(fields["destinations"][1], destinations_path,
                               "a list of destinations")
        if not listed and isinstance(fields["destinations"][1], yaml.SequenceNode):
            checker.report(fields["destinations"][1], destinations_path,
                           "must list at least one destination")
        for item_path, item in listed:
            destination = _destination(item, item_path, checker)
            if destination is not None:
                destinations.append(destination)
    inject = frozenset({"header"})
    templates: tuple[HeaderTemplate, ...] = ()
    if "inject" in fields:
        inject, templates = parse_inject(fields["inject"][1], _join(path, "inject"),
                                         _INJECT_ORDER, checker)
    env = None
    if "env" in fields:
        env_path = _join(path, "env")
        env = checker.string(fields["env"][1], env_path, "a variable name")
        if env is not None and not _ENV.fullmatch(env):
            checker.report(fields["env"][1], env_path, f"invalid variable name {_quoted(env)}: "
                                                       "use A-Z, 0-9 and _, e.g. GITHUB_TOKEN")
    oauth2, client_cert = _credential_kind(fields, path, destinations, checker)
    kinds = _template_kinds(fields, path, source, templates, checker)
    if kinds.basic_username is not None:
        inject = inject | {BASIC_PLACE}
    if client_cert is not None:
        inject = frozenset()  # a private key is presented in the handshake, never placed
    sign = parse_sign(fields["sign"][1], _join(path, "sign"), checker) if "sign" in fields \
        else None
    check_sigv4_secret(fields, key, path, sign, destinations, checker)
    if sign is not None:
        inject = frozenset()  # a SigV4 key only signs; a placeholder found elsewhere is refused
    per_request = "approval" in fields and parse_secret_approval(
        fields["approval"][1], _join(path, "approval"), checker,
        "client_cert" if client_cert is not None else "sign" if sign is not None else None)
    rate = None
    if "rate" in fields:
        rate = parse_rate(fields["rate"][1], fields.get("burst", (None, None))[1], path, checker)
    elif "burst" in fields:
        checker.report(fields["burst"][0], _join(path, "burst"), 'only used with "rate"')
    models = parse_models(fields["models"][1], _join(path, "models"), checker) \
        if "models" in fields else ()
    budget = parse_budget(fields["budget"][1], _join(path, "budget"), checker) \
        if "budget" in fields else None
    concurrency = None
    if "concurrency" in fields:
        concurrency = checker.integer(fields["concurrency"][1], _join(path, "concurrency"))
        if concurrency is not None and not 1 <= concurrency <= 100_000:
            checker.report(fields["concurrency"][1], _join(path, "concurrency"),
                           "must be from 1 to 100000")
    hosted_tools, tool_rules = parse_hosted_tools(
        fields["hosted_tools"][1], _join(path, "hosted_tools"), checker) \
        if "hosted_tools" in fields else (None, ())
    if source is None or placeholder is None:
        return None
    return SecretPolicy(name=name, source=source, command=command, placeholder=placeholder,
                        destinations=tuple(destinations), inject=inject, env=env,
                        oauth2=oauth2, client_cert=client_cert, templates=templates,
                        basic_username=kinds.basic_username,
                        placeholder_format=kinds.placeholder_format,
                        cache_ttl=kinds.cache_ttl, timeout=kinds.timeout, sign=sign,
                        per_request_approval=per_request, retire_for=kinds.retire_for,
                        rate=rate, models=models, budget=budget, hosted_tools=hosted_tools,
                        hosted_tool_rules=tool_rules,
                        concurrency=concurrency)


class _TemplateKinds(NamedTuple):
    basic_username: str | None
    placeholder_format: PlaceholderFormat | None
    cache_ttl: timedelta | None
    timeout: timedelta | None
    retire_for: timedelta | None = None


def _template_kinds(fields: dict[str, tuple[yaml.Node, yaml.Node]], path: str,
                    source: str | None, templates: tuple[HeaderTemplate, ...],
                    checker: _Checker) -> _TemplateKinds:
    """``basic``, ``placeholder_format``, ``cache_ttl``, ``timeout`` (inject_fields.py),
    ``retire_for``."""
    basic_username = placeholder_format = cache_ttl = timeout = retire_for = None
    if "basic" in fields:
        basic_username = parse_basic(fields["basic"][1], _join(path, "basic"), checker)
    for template in templates:
        if "{basic}" in template.value and "basic" not in fields:
            checker.report(fields["inject"][1], _join(path, "inject"),
                           'a "{basic}" template needs basic: {username: NAME}')
    if "placeholder_format" in fields:
        key, node = fields["placeholder_format"]
        placeholder_format = parse_placeholder_format(node, _join(path, "placeholder_format"),
                                                      checker)
        if "placeholder" in fields:
            checker.report(key, _join(path, "placeholder_format"),
                           "use either placeholder or placeholder_format, not both")
    if "cache_ttl" in fields:
        key, node = fields["cache_ttl"]
        cache_ttl = parse_duration_field(node, _join(path, "cache_ttl"), checker)
        if source is not None and source != "command" and not source.startswith("keyring:"):
            checker.report(key, _join(path, "cache_ttl"),
                           "only used with from: command or keyring:SERVICE/USER")
    if "timeout" in fields:
        key, node = fields["timeout"]
        timeout = parse_duration_field(node, _join(path, "timeout"), checker)
        if source is not None and source != "command":
            checker.report(key, _join(path, "timeout"), 'only used with "from: command"')
    if "retire_for" in fields:
        key, node = fields["retire_for"]
        retire_for = parse_duration_field(node, _join(path, "retire_for"), checker)
        if source is not None and source != "vault":
            checker.report(key, _join(path, "retire_for"),
                           'only used with "from: vault" (other backends keep no history)')
    return _TemplateKinds(basic_username, placeholder_format, cache_ttl, timeout, retire_for)


def _credential_kind(fields: dict[str, tuple[yaml.Node, yaml.Node]], path: str,
                     destinations: list[Destination], checker: _Checker
                     ) -> tuple[OAuth2Config | None, str | None]:
    """``oauth2`` / ``client_cert``: the secret is minted from, or presented, not swapped in."""
    oauth2 = client_cert = None
    if "oauth2" in fields:
        oauth2 = parse_oauth2(fields["oauth2"][1], fields["oauth2"][0],
                              _join(path, "oauth2"), checker)
        # The client secret must not be sendable to its own token endpoint by the agent.
        if oauth2 is not None and any(covers_token_url(d, oauth2) for d in destinations):
            checker.report(fields["oauth2"][1], _join(path, "oauth2.token_url"),
                           "a destination of this secret covers its token endpoint; the agent "
                           "must not reach it: narrow the destination's host, port or paths")
    if "client_cert" in fields:
        key, node = fields["client_cert"]
        client_cert = parse_client_cert(node, _join(path, "client_cert"), checker)
        if "oauth2" in fields:
            checker.report(key, _join(path, "client_cert"),
                           "a secret is either an oauth2 client or a client certificate key")
        if "inject" in fields:
            checker.report(fields["inject"][0], _join(path, "inject"),
                           "a client certificate key is never placed in a request: "
                           "remove inject")
    return oauth2, client_cert


def _source(node: yaml.Node, path: str, checker: _Checker) -> str | None:
    source = checker.string(node, path)
    if source is None:
        return None
    kind, colon, argument = source.partition(":")
    if source in ("vault", "command"):
        return source
    if kind == "env" and colon and _ENV_SOURCE.fullmatch(argument):
        return source
    if kind == "file" and colon and argument:
        return source
    # The keyring backend splits at the last "/", so the user part cannot hold one.
    service, slash, user = argument.rpartition("/")
    if kind == "keyring" and colon and slash and service and user:
        return source
    # The value is not repeated: a credential pasted here by mistake must not reach a log.
    checker.report(node, path, "not a secret source: use vault, env:VAR, file:PATH, "
                               "keyring:SERVICE/USER or command")
    return None


def _placeholder(node: yaml.Node, path: str, checker: _Checker) -> str | None:
    placeholder = checker.string(node, path)
    if placeholder is None:
        return None
    printable = all("!" <= char <= "~" for char in placeholder)
    if not printable or not PLACEHOLDER_MIN <= len(placeholder) <= PLACEHOLDER_MAX:
        checker.report(node, path, f"must be {PLACEHOLDER_MIN} to {PLACEHOLDER_MAX} printable "
                                   "ASCII characters without spaces")
        return None
    return placeholder


def _destination(node: yaml.Node, path: str, checker: _Checker) -> Destination | None:
    before = len(checker.issues)
    fields = checker.fields(node, path, "destination", node)
    if fields is None:
        return None
    host = None
    if "host" in fields:
        host = _host_pattern(fields["host"][1], _join(path, "host"), checker)
    scheme = "https"
    if "scheme" in fields:
        scheme_node = fields["scheme"][1]
        scheme = checker.string(scheme_node, _join(path, "scheme")) or "https"
        if scheme not in DEFAULT_PORTS:
            checker.report(scheme_node, _join(path, "scheme"),
                           f"unknown scheme {_quoted(scheme)}: use https or http")
    port = DEFAULT_PORTS.get(scheme, 443)
    if "port" in fields:
        port_node = fields["port"][1]
        given = checker.integer(port_node, _join(path, "port"))
        if given is not None and not PORT_MIN <= given <= PORT_MAX:
            checker.report(port_node, _join(path, "port"),
                           f"must be between {PORT_MIN} and {PORT_MAX}")
        port = given or port
    methods = DEFAULT_METHODS
    if "methods" in fields:
        methods = _methods(fields["methods"][1], _join(path, "methods"), checker)
    paths: tuple[str, ...] = ()
    if "paths" in fields:
        paths = _paths(fields["paths"][1], _join(path, "paths"), checker)
    aws = parse_aws_scope(fields["aws"][1], _join(path, "aws"), checker) if "aws" in fields \
        else None
    preview = "full"
    if "approval_preview" in fields:
        preview_node = fields["approval_preview"][1]
        preview = checker.string(preview_node, _join(path, "approval_preview")) or "full"
        if preview not in APPROVAL_PREVIEWS:
            checker.report(preview_node, _join(path, "approval_preview"),
                           f"unknown approval_preview {_quoted(preview)}: use full, headers "
                           "or none")
    withhold = parse_withhold(fields["withhold"][1], _join(path, "withhold"), checker) \
        if "withhold" in fields else ()
    mcp = parse_mcp(fields["mcp"][1], _join(path, "mcp"), checker) if "mcp" in fields \
        else None
    graphql = parse_graphql(fields["graphql"][1], _join(path, "graphql"), checker) \
        if "graphql" in fields else None
    if host is None or len(checker.issues) > before:
        return None
    return Destination(scheme=scheme, host=host, port=port, methods=methods, paths=paths,
                       aws=aws, approval_preview=preview, withhold=withhold, mcp=mcp,
                       graphql=graphql)


def _host_pattern(node: yaml.Node, path: str, checker: _Checker) -> str | None:
    raw = checker.string(node, path, "a host name")
    if raw is None:
        return None
    try:
        return canonical_host_pattern(raw)
    except HostError as error:
        checker.report(node, path, str(error))
        return None


def _host_patterns(node: yaml.Node, path: str, checker: _Checker) -> tuple[str, ...]:
    hosts = checker.strings(node, path, "a list of host names") or []
    found = (_host_pattern(item, item_path, checker) for item_path, item, _ in hosts)
    return tuple(dict.fromkeys(host for host in found if host is not None))


def _methods(node: yaml.Node, path: str, checker: _Checker) -> frozenset[str]:
    listed = checker.strings(node, path)
    if listed == []:
        checker.report(node, path, "must name at least one method; leave it out for the default")
    methods = set()
    for item_path, item, value in listed or ():
        method = value.upper()
        if method in NEVER_METHODS:
            checker.report(item, item_path, f"{method} is never allowed: {_WHY_NEVER}")
        elif not _METHOD.fullmatch(method):
            checker.report(item, item_path, f"invalid method {_quoted(value)}")
        elif method not in REGISTERED_METHODS and method not in NEVER_METHODS:
            checker.report(item, item_path, f"unknown HTTP method {_quoted(value)} (not in the "
                           "IANA method registry)" + _suggestion(method, REGISTERED_METHODS))
        else:
            methods.add(method)
    return frozenset(methods)


def _paths(node: yaml.Node, path: str, checker: _Checker) -> tuple[str, ...]:
    listed = checker.strings(node, path)
    if listed == []:
        checker.report(node, path, "must name at least one path; leave it out to allow every path")
    globs = []
    for item_path, item, glob in listed or ():
        if _UNFIT_PATH_CHAR.search(glob):
            # Paths are matched without the query string, so a "?" here would never match.
            checker.report(item, item_path, f"invalid path pattern {_quoted(glob)}: use printable "
                                            'characters without spaces, "?" or "#"')
            continue
        try:
            check_path_glob(glob)
        except GlobError as error:
            checker.report(item, item_path, str(error))
            continue
        if problem := unreachable_reason(glob):
            checker.report(item, item_path, f"path pattern {_quoted(glob)} {problem}")
            continue
        globs.append(glob)
    return tuple(dict.fromkeys(globs))


def _agents(node: yaml.Node, checker: _Checker, secret_names: set[str]) -> dict[str, AgentPolicy]:
    built: dict[str, AgentPolicy] = {}
    for name, key, value in checker.entries(node, "agents"):
        path = _join("agents", name)
        if not checker.name(key, path, "agent"):
            continue
        agent = _agent(name, key, value, path, checker, secret_names)
        if agent is not None:
            built[name] = agent
    return built


def _agent(name: str, key: yaml.Node, node: yaml.Node, path: str, checker: _Checker,
           secret_names: set[str]) -> AgentPolicy | None:
    before = len(checker.issues)
    fields = checker.fields(node, path, "agent", key)
    if fields is None:
        return None
    known: list[str] = []  # sorted at the first undefined name: not per agent of a large policy

    def suggestion(value: str) -> str:
        if not known:
            known.extend(sorted(secret_names))
        return _suggestion(value, known)

    def secret_list(field_name: str, allowed: set[str],
                    undefined: Callable[[str], str]) -> set[str]:
        listed = checker.strings(fields[field_name][1], _join(path, field_name)) or []
        chosen = set()
        for item_path, item, value in listed:
            if value in allowed:
                chosen.add(value)
            else:
                checker.report(item, item_path, undefined(value))
        return chosen

    secrets: set[str] = set()
    if "secrets" in fields:
        secrets = secret_list("secrets", secret_names, lambda value: (
            f"undefined secret {_quoted(value)}{suggestion(value)}"))
    max_ttl = DEFAULT_MAX_TTL
    if "max_ttl" in fields:
        ttl_node = fields["max_ttl"][1]
        text = checker.string(ttl_node, _join(path, "max_ttl"), "a duration such as 1h")
        if text is not None:
            try:
                max_ttl = parse_duration(text)
            except DurationError as error:
                checker.report(ttl_node, _join(path, "max_ttl"), str(error))
    approval: set[str] = set()
    if "approval" in fields:
        approval = secret_list("approval", secrets, lambda value: (
            f"secret {_quoted(value)} is not in this agent's secrets"))
    if len(checker.issues) > before:
        return None
    return AgentPolicy(name=name, secrets=frozenset(secrets), max_ttl=max_ttl,
                       approval=frozenset(approval))


def _pins(node: yaml.Node, checker: _Checker
          ) -> dict[tuple[str, int | None], tuple[str, int | None]]:
    path = "network.resolve"
    pins: dict[tuple[str, int | None], tuple[str, int | None]] = {}
    for item_path, item, value in checker.strings(node, path, f"a list of {PIN_SPELLING}") or ():
        try:
            pins.update(ResolvePins.parse([value], path).pins)
        except PinError:
            checker.report(item, item_path,
                           f"invalid pin {_quoted(value)}: use {PIN_SPELLING}, such as "
                           "api.example.com:443=127.0.0.1:8443")
    return pins


def _networks(node: yaml.Node, checker: _Checker
              ) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    path = "network.allow_addresses"
    networks = []
    for item_path, item, value in checker.strings(node, path, "a list of CIDRs") or ():
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            checker.report(item, item_path,
                           f"invalid address range {_quoted(value)}: use a CIDR such as "
                           "127.0.0.0/8")
    return tuple(dict.fromkeys(networks))
