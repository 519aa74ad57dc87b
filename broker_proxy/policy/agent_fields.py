"""Reading the ``agents`` section: which secrets each agent may be granted, for how long, and
which of them need a person's approval per request."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import yaml

from broker_proxy.durations import DurationError, parse_duration
from broker_proxy.policy.checking import NodeChecker
from broker_proxy.policy.field_checker import join_path, quoted, suggestion
from broker_proxy.policy.model import AgentPolicy

DEFAULT_MAX_TTL = timedelta(hours=1)


def parse_agents(node: yaml.Node, checker: NodeChecker,
                 secret_names: set[str]) -> dict[str, AgentPolicy]:
    """Every well-formed agent by name; ``secret_names`` are the secrets the file defines."""
    built: dict[str, AgentPolicy] = {}
    for name, key, value in checker.entries(node, "agents"):
        path = join_path("agents", name)
        if not checker.name(key, path, "agent"):
            continue
        agent = _agent(name, key, value, path, checker, secret_names)
        if agent is not None:
            built[name] = agent
    return built


def _agent(name: str, key: yaml.Node, node: yaml.Node, path: str, checker: NodeChecker,
           secret_names: set[str]) -> AgentPolicy | None:
    before = len(checker.issues)
    fields = checker.fields(node, path, "agent", key)
    if fields is None:
        return None
    known: list[str] = []  # sorted at the first undefined name: not per agent of a large policy

    def close_secret(value: str) -> str:
        if not known:
            known.extend(sorted(secret_names))
        return suggestion(value, known)

    def secret_list(field_name: str, allowed: set[str],
                    undefined: Callable[[str], str]) -> set[str]:
        listed = checker.strings(fields[field_name][1], join_path(path, field_name)) or []
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
            f"undefined secret {quoted(value)}{close_secret(value)}"))
    max_ttl = DEFAULT_MAX_TTL
    if "max_ttl" in fields:
        max_ttl = _max_ttl(fields["max_ttl"][1], join_path(path, "max_ttl"), checker)
    approval: set[str] = set()
    if "approval" in fields:
        approval = secret_list("approval", secrets, lambda value: (
            f"secret {quoted(value)} is not in this agent's secrets"))
    if len(checker.issues) > before:
        return None
    return AgentPolicy(name=name, secrets=frozenset(secrets), max_ttl=max_ttl,
                       approval=frozenset(approval))


def _max_ttl(node: yaml.Node, path: str, checker: NodeChecker) -> timedelta:
    text = checker.string(node, path, "a duration such as 1h")
    if text is not None:
        try:
            return parse_duration(text)
        except DurationError as error:
            checker.report(node, path, str(error))
    return DEFAULT_MAX_TTL
