"""Paths in a report as the policy's patterns (`/repos/acme/**`) rather than each one sent.

A reviewer asks "which of the allowed endpoints did it touch", and thousands of distinct paths
(ids in them) would bury the answer and grow the report. With a policy, each use is grouped under
the first path pattern of the secret's destinations that covers it; a use no pattern covers (a
destination with no `paths`, or a policy changed since) keeps its own path.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from broker_proxy.policy.destinations import host_matches, path_matches
from broker_proxy.policy.model import Policy

PathTemplate = Callable[[tuple[str, ...], object, object, object], str | None]


def templater(policy: Policy) -> PathTemplate:
    """A function (secrets, host, port, path) -> the covering pattern, or None."""

    @lru_cache(maxsize=8192)  # bounded: paths are agent-controlled and unbounded in number
    def template(secrets: tuple[str, ...], host: object, port: object,
                 path: object) -> str | None:
        if not isinstance(host, str) or not isinstance(path, str):
            return None
        for name in secrets:
            secret = policy.secrets.get(name)
            for destination in secret.destinations if secret is not None else ():
                if destination.port != port or not host_matches(destination.host, host):
                    continue
                for glob in destination.paths:
                    if path_matches(glob, path):
                        return glob
        return None

    return template
