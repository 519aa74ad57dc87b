"""Policy version 1: the model, its loader and the destination matcher.

Loading and compiling are two steps: ``load_policy`` returns the immutable ``Policy`` (or raises
``PolicyError`` listing every problem), and the request path builds a ``DestinationIndex(policy)``
once per loaded policy (``broker_proxy.decision.active_policy.ActivePolicy`` does that,
together with the placeholder scanner), then asks it per request with hosts from ``canonical_host``.
"""

from broker_proxy.policy.destinations import (
    DestinationIndex,
    GlobError,
    HostError,
    canonical_host,
    canonical_host_pattern,
    host_matches,
    path_matches,
)
from broker_proxy.policy.loader import PolicyError, PolicyIssue, load_policy, load_policy_text
from broker_proxy.policy.model import (
    DEFAULT_METHODS,
    INJECT_PLACES,
    NEVER_METHODS,
    AgentPolicy,
    Destination,
    Policy,
    SecretPolicy,
)
from broker_proxy.policy.schema import policy_json_schema

__all__ = [
    "DEFAULT_METHODS",
    "INJECT_PLACES",
    "NEVER_METHODS",
    "AgentPolicy",
    "Destination",
    "DestinationIndex",
    "GlobError",
    "HostError",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "SecretPolicy",
    "canonical_host",
    "canonical_host_pattern",
    "host_matches",
    "load_policy",
    "load_policy_text",
    "path_matches",
    "policy_json_schema",
]
