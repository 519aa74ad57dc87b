"""A policy ready for the request path: the model plus the indexes built from it once."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from broker_proxy.decision.placeholders import PlaceholderScanner
from broker_proxy.policy.aws_fields import SIGN_AWS_SIGV4
from broker_proxy.policy.destinations import DestinationIndex
from broker_proxy.policy.loader import collector_paused, load_policy
from broker_proxy.policy.model import Policy
from broker_proxy.time_source import utc_now


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    policy: Policy
    index: DestinationIndex
    scanner: PlaceholderScanner
    # Placeholder key id -> secret name for the secrets the proxy re-signs (AWS SigV4): built
    # once per policy so a request never scans every secret.
    sigv4_placeholders: dict[str, str]
    # Some secret can take long to resolve (an OAuth2 token endpoint, a command, the OS
    # keyring): decisions should then run off the proxy's event loop.
    slow_secrets: bool
    # Secrets with a per-grant rate: empty, and the request path never asks the store for a
    # bucket (flows without limits pay nothing for them).
    rated_secrets: frozenset[str] = frozenset()
    # Secrets with LLM rules (models, budget, hosted_tools): the body of a request carrying
    # one is read for its model and hosted tools (request/model_rules.py, hosted_tools.py).
    model_limited: frozenset[str] = frozenset()
    # Secrets with an LLM budget or a concurrency cap (budget_keeper.py): their requests hold a
    # reservation in the store until their answer settles it.
    budgeted_secrets: frozenset[str] = frozenset()
    # Secrets with a destination that has MCP or GraphQL rules (protocol_rules.py): only their
    # requests' bodies are read as JSON-RPC or GraphQL.
    protocol_limited: frozenset[str] = frozenset()
    # When this policy started to serve (start-up or reload), for the console's policy page.
    loaded_at: datetime = field(default_factory=utc_now, compare=False)

    @classmethod
    def build(cls, policy: Policy) -> ActivePolicy:
        return cls(
            policy=policy,
            sigv4_placeholders={secret.placeholder: name
                                for name, secret in policy.secrets.items()
                                if secret.sign == SIGN_AWS_SIGV4},
            slow_secrets=any(secret.oauth2 is not None or secret.source == "command"
                             or secret.source.startswith("keyring:")
                             for secret in policy.secrets.values()),
            rated_secrets=frozenset(name for name, secret in policy.secrets.items()
                                    if secret.rate is not None),
            model_limited=frozenset(name for name, secret in policy.secrets.items()
                                    if secret.llm_rules),
            budgeted_secrets=frozenset(name for name, secret in policy.secrets.items()
                                       if secret.budget is not None
                                       or secret.concurrency is not None),
            protocol_limited=frozenset(
                name for name, secret in policy.secrets.items()
                if any(d.protocol_rules for d in secret.destinations)),
            index=DestinationIndex(policy),
            scanner=PlaceholderScanner(
                {n: s.placeholder for n, s in policy.secrets.items()},
                {n: s.placeholder_format for n, s in policy.secrets.items()
                 if s.placeholder_format is not None}),
        )

    @classmethod
    def load(cls, path: str) -> ActivePolicy:
        with collector_paused():  # see there: a large policy's objects all live to the end
            return cls.build(load_policy(path))
