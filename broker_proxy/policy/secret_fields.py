"""Reading the ``secrets`` section: where each secret comes from, where it may go, how it goes
into a request, and the limits on its use.

Each field family has its own parser module (inject_fields, oauth2_mtls_fields, aws_fields,
approval_fields, limit_fields, destination_fields, placeholder_fields); this walks one secret's
entry, calls them in a fixed order (messages at one position keep that order), and checks the
fields that only make sense together.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import NamedTuple

import yaml

from broker_proxy.policy.approval_fields import parse_secret_approval
from broker_proxy.policy.aws_fields import check_sigv4_secret, parse_sign
from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.destination_fields import parse_destination
from broker_proxy.policy.field_checker import join_path, quoted
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
    parse_rate,
)
from broker_proxy.policy.model import (
    BASIC_PLACE,
    INJECT_PLACES,
    Budget,
    Destination,
    HeaderTemplate,
    HostedToolRule,
    OAuth2Config,
    PlaceholderFormat,
    RateLimit,
    SecretPolicy,
)
from broker_proxy.policy.oauth2_mtls_fields import (
    covers_token_url,
    parse_client_cert,
    parse_oauth2,
)
from broker_proxy.policy.placeholder_fields import (
    check_placeholders_apart,
    default_placeholder,
    parse_placeholder,
)
from broker_proxy.policy.spec import ENV_PATTERN

Fields = dict[str, tuple[yaml.Node, yaml.Node]]

_ENV = re.compile(ENV_PATTERN)
_ENV_SOURCE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # env:VAR reads any variable name
# The order messages list them in; the set itself is the model's INJECT_PLACES.
_INJECT_ORDER = tuple(sorted(INJECT_PLACES, key=("header", "query", "body").index))


def parse_secrets(node: yaml.Node, checker: NodeChecker,
                  names: set[str]) -> dict[str, SecretPolicy]:
    """Every well-formed secret by name; ``names`` gets every name the section defines, even
    of a broken secret, so agents naming it get no second, false error."""
    built: dict[str, SecretPolicy] = {}
    placeholders: list[tuple[str, str, yaml.Node | yaml.Mark, str]] = []
    env_owner: dict[str, str] = {}
    for name, key, value in checker.entries(node, "secrets"):
        path = join_path("secrets", name)
        names.add(name)
        if not checker.name(key, path, "secret"):
            continue
        before = len(checker.issues)
        secret = _secret(name, key, value, path, checker)
        if secret is None or len(checker.issues) > before:
            continue
        fields = value.value
        where = next((v for k, v in fields if k.value == "placeholder"), key)
        placeholders.append((name, secret.placeholder, where, join_path(path, "placeholder")))
        if secret.env is not None:
            env_node = next(v for k, v in fields if k.value == "env")
            if secret.env in env_owner:
                checker.report(env_node, join_path(path, "env"),
                               f"{secret.env} already carries the placeholder of secret "
                               f"{quoted(env_owner[secret.env])}")
                continue
            env_owner[secret.env] = name
        built[name] = secret
    check_placeholders_apart(placeholders, checker)
    return built


def _secret(name: str, key: yaml.Node, node: yaml.Node, path: str,
            checker: NodeChecker) -> SecretPolicy | None:
    fields = checker.fields(node, path, "secret", key)
    if fields is None:
        return None
    source = _source(fields["from"][1], join_path(path, "from"), checker) if "from" in fields \
        else None
    command = _command(fields, key, path, source, checker)
    placeholder: str | None = default_placeholder(name)
    if "placeholder" in fields:
        placeholder = parse_placeholder(fields["placeholder"][1], join_path(path, "placeholder"),
                                        checker)
    destinations = _destinations(fields, path, checker)
    inject = frozenset({"header"})
    templates: tuple[HeaderTemplate, ...] = ()
    if "inject" in fields:
        inject, templates = parse_inject(fields["inject"][1], join_path(path, "inject"),
                                         _INJECT_ORDER, checker)
    env = _env(fields, path, checker)
    oauth2, client_cert = _credential_kind(fields, path, destinations, checker)
    kinds = _template_kinds(fields, path, source, templates, checker)
    if kinds.basic_username is not None:
        inject = inject | {BASIC_PLACE}
    if client_cert is not None:
        inject = frozenset()  # a private key is presented in the handshake, never placed
    sign = parse_sign(fields["sign"][1], join_path(path, "sign"), checker) if "sign" in fields \
        else None
    check_sigv4_secret(fields, key, path, sign, destinations, checker)
    if sign is not None:
        inject = frozenset()  # a SigV4 key only signs; a placeholder found elsewhere is refused
    per_request = "approval" in fields and parse_secret_approval(
        fields["approval"][1], join_path(path, "approval"), checker,
        "client_cert" if client_cert is not None else "sign" if sign is not None else None)
    limits = _limits(fields, path, checker)
    if source is None or placeholder is None:
        return None
    return SecretPolicy(name=name, source=source, command=command, placeholder=placeholder,
                        destinations=tuple(destinations), inject=inject, env=env,
                        oauth2=oauth2, client_cert=client_cert, templates=templates,
                        basic_username=kinds.basic_username,
                        placeholder_format=kinds.placeholder_format,
                        cache_ttl=kinds.cache_ttl, timeout=kinds.timeout, sign=sign,
                        per_request_approval=per_request, retire_for=kinds.retire_for,
                        rate=limits.rate, models=limits.models, budget=limits.budget,
                        hosted_tools=limits.hosted_tools,
                        hosted_tool_rules=limits.hosted_tool_rules,
                        concurrency=limits.concurrency)


def _source(node: yaml.Node, path: str, checker: NodeChecker) -> str | None:
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


def _command(fields: Fields, key: yaml.Node, path: str, source: str | None,
             checker: NodeChecker) -> tuple[str, ...] | None:
    """``command``: the argv ``from: command`` runs, required with it and refused without."""
    if "command" not in fields:
        if source == "command":
            checker.report(key, path, 'missing required field "command" (from: command runs it)')
        return None
    command_key, command_node = fields["command"]
    if source is not None and source != "command":
        checker.report(command_key, join_path(path, "command"), 'only used with "from: command"')
    elif source == "command":
        argv = checker.strings(command_node, join_path(path, "command"))
        if argv == []:
            checker.report(command_node, join_path(path, "command"),
                           "must name the program to run, e.g. [pass, show, github]")
        return tuple(value for _, _, value in argv or ())
    return None


def _destinations(fields: Fields, path: str, checker: NodeChecker) -> list[Destination]:
    if "destinations" not in fields:
        return []
    destinations_path = join_path(path, "destinations")
    node = fields["destinations"][1]
    listed = checker.items(node, destinations_path, "a list of destinations")
    if not listed and isinstance(node, yaml.SequenceNode):
        checker.report(node, destinations_path, "must list at least one destination")
    destinations = []
    for item_path, item in listed:
        destination = parse_destination(item, item_path, checker)
        if destination is not None:
            destinations.append(destination)
    return destinations


def _env(fields: Fields, path: str, checker: NodeChecker) -> str | None:
    """``env``: the variable that carries the placeholder for ``exec`` and ``env``."""
    if "env" not in fields:
        return None
    env_path = join_path(path, "env")
    env = checker.string(fields["env"][1], env_path, "a variable name")
    if env is not None and not _ENV.fullmatch(env):
        checker.report(fields["env"][1], env_path, f"invalid variable name {quoted(env)}: "
                                                   "use A-Z, 0-9 and _, e.g. GITHUB_TOKEN")
    return env


def _credential_kind(fields: Fields, path: str, destinations: list[Destination],
                     checker: NodeChecker) -> tuple[OAuth2Config | None, str | None]:
    """``oauth2`` / ``client_cert``: the secret is minted from, or presented, not swapped in."""
    oauth2 = client_cert = None
    if "oauth2" in fields:
        oauth2 = parse_oauth2(fields["oauth2"][1], fields["oauth2"][0],
                              join_path(path, "oauth2"), checker)
        # The client secret must not be sendable to its own token endpoint by the agent.
        if oauth2 is not None and any(covers_token_url(d, oauth2) for d in destinations):
            checker.report(fields["oauth2"][1], join_path(path, "oauth2.token_url"),
                           "a destination of this secret covers its token endpoint; the agent "
                           "must not reach it: narrow the destination's host, port or paths")
    if "client_cert" in fields:
        key, node = fields["client_cert"]
        client_cert = parse_client_cert(node, join_path(path, "client_cert"), checker)
        if "oauth2" in fields:
            checker.report(key, join_path(path, "client_cert"),
                           "a secret is either an oauth2 client or a client certificate key")
        if "inject" in fields:
            checker.report(fields["inject"][0], join_path(path, "inject"),
                           "a client certificate key is never placed in a request: "
                           "remove inject")
    return oauth2, client_cert


class _TemplateKinds(NamedTuple):
    basic_username: str | None
    placeholder_format: PlaceholderFormat | None
    cache_ttl: timedelta | None
    timeout: timedelta | None
    retire_for: timedelta | None = None


def _template_kinds(fields: Fields, path: str, source: str | None,
                    templates: tuple[HeaderTemplate, ...],
                    checker: NodeChecker) -> _TemplateKinds:
    """``basic``, ``placeholder_format``, ``cache_ttl``, ``timeout`` (inject_fields.py),
    ``retire_for``."""
    basic_username = placeholder_format = cache_ttl = timeout = retire_for = None
    if "basic" in fields:
        basic_username = parse_basic(fields["basic"][1], join_path(path, "basic"), checker)
    for template in templates:
        if "{basic}" in template.value and "basic" not in fields:
            checker.report(fields["inject"][1], join_path(path, "inject"),
                           'a "{basic}" template needs basic: {username: NAME}')
    if "placeholder_format" in fields:
        key, node = fields["placeholder_format"]
        placeholder_format = parse_placeholder_format(node, join_path(path, "placeholder_format"),
                                                      checker)
        if "placeholder" in fields:
            checker.report(key, join_path(path, "placeholder_format"),
                           "use either placeholder or placeholder_format, not both")
    if "cache_ttl" in fields:
        key, node = fields["cache_ttl"]
        cache_ttl = parse_duration_field(node, join_path(path, "cache_ttl"), checker)
        if source is not None and source != "command" and not source.startswith("keyring:"):
            checker.report(key, join_path(path, "cache_ttl"),
                           "only used with from: command or keyring:SERVICE/USER")
    if "timeout" in fields:
        key, node = fields["timeout"]
        timeout = parse_duration_field(node, join_path(path, "timeout"), checker)
        if source is not None and source != "command":
            checker.report(key, join_path(path, "timeout"), 'only used with "from: command"')
    if "retire_for" in fields:
        key, node = fields["retire_for"]
        retire_for = parse_duration_field(node, join_path(path, "retire_for"), checker)
        if source is not None and source != "vault":
            checker.report(key, join_path(path, "retire_for"),
                           'only used with "from: vault" (other backends keep no history)')
    return _TemplateKinds(basic_username, placeholder_format, cache_ttl, timeout, retire_for)


class _Limits(NamedTuple):
    rate: RateLimit | None
    models: tuple[str, ...]
    budget: Budget | None
    concurrency: int | None
    hosted_tools: frozenset[str] | None
    hosted_tool_rules: tuple[tuple[str, HostedToolRule], ...]


def _limits(fields: Fields, path: str, checker: NodeChecker) -> _Limits:
    """``rate``/``burst``, ``models``, ``budget``, ``concurrency``, ``hosted_tools``
    (limit_fields.py): what one grant of the secret may do, how often and at what cost."""
    rate = None
    if "rate" in fields:
        rate = parse_rate(fields["rate"][1], fields.get("burst", (None, None))[1], path, checker)
    elif "burst" in fields:
        checker.report(fields["burst"][0], join_path(path, "burst"), 'only used with "rate"')
    models = parse_models(fields["models"][1], join_path(path, "models"), checker) \
        if "models" in fields else ()
    budget = parse_budget(fields["budget"][1], join_path(path, "budget"), checker) \
        if "budget" in fields else None
    concurrency = None
    if "concurrency" in fields:
        concurrency = checker.integer(fields["concurrency"][1], join_path(path, "concurrency"))
        if concurrency is not None and not 1 <= concurrency <= 100_000:
            checker.report(fields["concurrency"][1], join_path(path, "concurrency"),
                           "must be from 1 to 100000")
    hosted_tools, tool_rules = parse_hosted_tools(
        fields["hosted_tools"][1], join_path(path, "hosted_tools"), checker) \
        if "hosted_tools" in fields else (None, ())
    return _Limits(rate, models, budget, concurrency, hosted_tools, tool_rules)
