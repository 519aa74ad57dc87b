"""Read a version 1 policy file into the immutable model, or say everything that is wrong with it.

The YAML is composed into nodes (never constructed into Python objects, yaml_compose.py), so
every message carries the line and column the operator has to fix, and no YAML tag can make the
parser build anything but plain values. Every problem in the file is collected before raising:
an operator fixing a policy should see the whole list at once, as
``FILE:LINE:COL: path.to.field: message``.

This module is the entry point and the walk over the top-level sections (``_build_policy``);
each section and field family is read by its own ``*_fields`` module through one
``FieldChecker`` per file.
"""

from __future__ import annotations

import gc
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple

import yaml

from broker_proxy.policy.agent_fields import parse_agents
from broker_proxy.policy.approval_fields import (
    DEFAULT_APPROVAL_TIMEOUT,
    parse_approval_timeout,
    parse_approval_webhook,
)
from broker_proxy.policy.chat_rules import parse_chat
from broker_proxy.policy.field_checker import DECIMAL, INT_TAG, NULL_TAG, FieldChecker
from broker_proxy.policy.issues import PolicyError, PolicyIssue
from broker_proxy.policy.limit_fields import parse_prices
from broker_proxy.policy.model import AgentPolicy, Policy, Price, SecretPolicy
from broker_proxy.policy.network_fields import Network, Pins, parse_egress, parse_network
from broker_proxy.policy.secret_fields import parse_secrets
from broker_proxy.policy.sign_in_fields import SignInPolicy, parse_sign_in
from broker_proxy.policy.spec import VERSION
from broker_proxy.policy.yaml_compose import compose

__all__ = [
    "PolicyError",
    "PolicyIssue",
    "collector_paused",
    "load_policy",
    "load_policy_and_tree",
    "load_policy_bytes",
    "load_policy_text",
    "read_policy_bytes",
]


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
        checker = FieldChecker(source)
        root = compose(text, checker)
        policy = _build_policy(root, checker)
        chat = parse_chat(root, checker)  # chat_rules.py: the `chat:` section
    if checker.issues or policy is None or root is None:
        raise PolicyError(sorted(checker.issues, key=lambda issue: (issue.line, issue.column)))
    return Policy(
        secrets=policy.secrets, agents=policy.agents, egress_allow=policy.egress_allow,
        allow_addresses=policy.allow_addresses, resolve=policy.resolve, source=source,
        digest=digest, approval_timeout=policy.approval_timeout,
        approval_webhook=policy.approval_webhook, prices=policy.prices,
        prices_as_of=policy.prices_as_of, sign_in=policy.sign_in, chat=chat,
    ), root


# --- the policy, section by section -----------------------------------------------------------


class _Sections(NamedTuple):
    secrets: dict[str, SecretPolicy]
    agents: dict[str, AgentPolicy]
    egress_allow: tuple[str, ...]
    allow_addresses: tuple[Network, ...]
    resolve: Pins
    approval_timeout: timedelta = DEFAULT_APPROVAL_TIMEOUT
    approval_webhook: str | None = None
    prices: tuple[tuple[str, Price], ...] = ()
    prices_as_of: str | None = None
    sign_in: SignInPolicy | None = None


def _build_policy(root: yaml.Node | None, checker: FieldChecker) -> _Sections | None:
    """Each top-level section read by its own parser; a new section is one more line here, a
    field of ``_Sections`` and of ``Policy`` (spec.py lists the keys the file may hold)."""
    if root is None or (root.tag == NULL_TAG and not root.value):
        checker.report(yaml.Mark("", 0, 0, 0, None, None), "",
                       'the file is empty; a policy starts with "version: 1"')
        return None
    if _other_version(root, checker):
        return None
    top = checker.fields(root, "", "policy", root)
    if top is None:
        return None
    if "version" in top:
        checker.integer(top["version"][1], "version")

    def section(name: str) -> yaml.Node | None:
        # An empty section ("agents:" with everything under it commented out) means none.
        node = top[name][1] if name in top else None
        return None if node is None or node.tag == NULL_TAG else node

    secret_names: set[str] = set()
    secrets_node = section("secrets")
    secrets = parse_secrets(secrets_node, checker, secret_names) if secrets_node else {}
    agents_node = section("agents")
    agents = parse_agents(agents_node, checker, secret_names) if agents_node else {}
    egress_node = section("egress")
    egress_allow = parse_egress(egress_node, checker) if egress_node is not None else ()
    network_node = section("network")
    allow_addresses, resolve = parse_network(network_node, checker) \
        if network_node is not None else ((), {})
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
                     approval_webhook, prices, prices_as_of,
                     parse_sign_in(section("sign_in"), checker) if section("sign_in") else None)


def _other_version(root: yaml.Node, checker: FieldChecker) -> bool:
    """True (and said once) for a file of another version: another version is another format,
    and checking it against version 1 would only produce noise."""
    if not isinstance(root, yaml.MappingNode):
        return False
    for key, value in root.value:
        if key.value == "version" and value.tag == INT_TAG and DECIMAL.fullmatch(value.value) \
                and int(value.value) != VERSION:
            checker.report(value, "version", f"unsupported version {value.value}: "
                                             f"this broker-proxy reads version {VERSION}")
            return True
    return False
