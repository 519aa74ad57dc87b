"""A policy ready for the request path: the model plus the indexes built from it once."""

from __future__ import annotations

from dataclasses import dataclass

from broker_proxy.placeholders import PlaceholderScanner
from broker_proxy.policy.destinations import DestinationIndex
from broker_proxy.policy.loader import load_policy
from broker_proxy.policy.model import Policy


@dataclass(frozen=True, slots=True)
class ActivePolicy:
    policy: Policy
    index: DestinationIndex
    scanner: PlaceholderScanner

    @classmethod
    def build(cls, policy: Policy) -> ActivePolicy:
        return cls(
            policy=policy,
            index=DestinationIndex(policy),
            scanner=PlaceholderScanner(
                {n: s.placeholder for n, s in policy.secrets.items()},
                {n: s.placeholder_format for n, s in policy.secrets.items()
                 if s.placeholder_format is not None}),
        )

    @classmethod
    def load(cls, path: str) -> ActivePolicy:
        return cls.build(load_policy(path))
