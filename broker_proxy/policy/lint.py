"""Warnings for a policy that loads but is probably not what its author meant.

The loader refuses what is wrong; these are merely suspicious, so the proxy runs with them and
`policy check` prints them (`--strict` makes them errors): a destination another destination of
the same secret already covers (editing one then silently changes nothing), a secret no agent
may hold, an agent that can be granted nothing, a scheme on the other scheme's usual port, a
Slack section that does not say which workspace's clicks count.
Each points at the line and column to look at, like the loader's errors.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from broker_proxy.policy.coverage import destination_covers
from broker_proxy.policy.loader import PolicyIssue, collector_paused, load_policy_and_tree
from broker_proxy.policy.model import Policy

_USUAL_PORTS = {"https": 443, "http": 80}


class _Positions:
    """Line and column of a field, found by walking the composed YAML."""

    def __init__(self, text: str, source: str, root: yaml.Node | None = None) -> None:
        self.source = source
        self.root = root
        if root is None:
            # The loader accepted the text, so libyaml (same marks, ten times faster) may read
            # it; `check_file` passes the loader's own tree instead and skips this.
            loader = yaml.CSafeLoader if getattr(yaml, "__with_libyaml__", False) \
                else yaml.SafeLoader
            try:
                self.root = yaml.compose(text, Loader=loader)
            except yaml.YAMLError:  # the loader accepted it, so this does not happen
                self.root = None
        # Keys of each mapping met, by name: a warning per secret of a large policy would
        # otherwise walk the whole mapping each time.
        self._keys: dict[int, dict[str, tuple[yaml.Node, yaml.Node]]] = {}

    def issue(self, steps: tuple[str | int, ...], field: str, message: str) -> PolicyIssue:
        node = self.root
        for step in steps:
            node = self._child(node, step)
        mark = node.start_mark if node is not None else None
        line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        return PolicyIssue(self.source, line, column, field, "warning: " + message)

    def _child(self, node: yaml.Node | None, step: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode) and isinstance(step, str):
            keys = self._keys.get(id(node))
            if keys is None:
                keys = self._keys[id(node)] = {}
                for key, value in node.value:  # the first of a repeated key, as before
                    if isinstance(key.value, str):
                        keys.setdefault(key.value, (key, value))
            entry = keys.get(step.removeprefix("key:"))
            if entry is None:
                return None
            return entry[0] if step.startswith("key:") else entry[1]
        return _child(node, step)


def _child(node: yaml.Node | None, step: str | int) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode) and isinstance(step, str):
        if step.startswith("key:"):  # the key itself, where a named entry starts
            return next((k for k, _ in node.value if k.value == step[4:]), None)
        return next((v for k, v in node.value if k.value == step), None)
    if isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step]
    return None


def policy_warnings(policy: Policy, text: str, source: str,
                    root: yaml.Node | None = None) -> list[PolicyIssue]:
    """The warnings of a loaded policy; ``root``, when given, is the YAML it was loaded from."""
    where = _Positions(text, source, root)
    found: list[PolicyIssue] = []
    held = set().union(*(agent.secrets for agent in policy.agents.values()))
    for name, secret in policy.secrets.items():
        base = ("secrets", name)
        if name not in held:
            found.append(where.issue(("secrets", f"key:{name}"), f"secrets.{name}",
                                     "no agent holds this secret, so no grant can use it"))
        for index, destination in enumerate(secret.destinations):
            path = f"secrets.{name}.destinations[{index}]"
            wider = next((other for other, candidate in enumerate(secret.destinations)
                          if other != index and destination_covers(candidate, destination)
                          and not (candidate == destination and other > index)), None)
            if wider is not None:
                found.append(where.issue((*base, "destinations", index), path,
                                         f"shadowed by destinations[{wider}], which covers "
                                         "everything this one allows"))
            usual = _USUAL_PORTS.get(destination.scheme)
            other_scheme = next((s for s, p in _USUAL_PORTS.items()
                                 if p == destination.port and s != destination.scheme), None)
            if other_scheme is not None and destination.port != usual:
                found.append(where.issue((*base, "destinations", index, "port"), path + ".port",
                                         f"{destination.scheme} on port {destination.port}, "
                                         f"the usual port of {other_scheme}"))
    for name, agent in policy.agents.items():
        if not any(policy.secrets[s].destinations for s in agent.secrets if s in policy.secrets):
            found.append(where.issue(("agents", f"key:{name}"), f"agents.{name}",
                                     "none of this agent's secrets has a destination: "
                                     "it can be granted nothing"))
    slack = policy.chat.slack if policy.chat is not None else None
    if slack is not None and slack.team_id is None:
        found.append(where.issue(("chat", "slack"), "chat.slack",
                                 "no team_id: a click is matched on its user id alone, from any "
                                 "workspace the app is installed in; set the workspace's id"))
    return sorted(found, key=lambda issue: (issue.line, issue.column))


def check_file(path: str | Path) -> tuple[Policy, list[PolicyIssue]]:
    """Load (raising the loader's PolicyError) and return the policy with its warnings."""
    policy, root = load_policy_and_tree(path)
    with collector_paused():
        return policy, policy_warnings(policy, "", str(path), root)
