"""Large policies for the scale tests and benchmarks: a real policy plus filler secrets.

Each filler secret looks like an operator's: a vault source, one destination with methods and
a path glob, held by one of ten filler agents; none of them is ever asked for by a request.
"""

from __future__ import annotations

FILLER_AGENTS = 10


def filler_secrets(count: int) -> list[str]:
    lines = []
    for index in range(count):
        lines += [f"  filler{index}:", "    from: vault", "    destinations:",
                  f"      - host: api{index % 997}.filler.example",
                  "        methods: [GET, POST]", f'        paths: ["/v1/f{index}/*"]']
    return lines


def filler_agents(count: int) -> list[str]:
    lines = []
    per = -(-count // FILLER_AGENTS)
    for agent in range(FILLER_AGENTS):
        names = [f"filler{index}" for index in range(agent * per, min(count, (agent + 1) * per))]
        if names:
            lines += [f"  filler-bot{agent}:", f"    secrets: [{', '.join(names)}]",
                      "    max_ttl: 1h"]
    return lines


def with_filler(policy: str, count: int) -> str:
    """``policy`` (with a "secrets:" and an "agents:" section) plus ``count`` filler secrets."""
    head, secrets_line, rest = policy.partition("secrets:\n")
    between, agents_line, tail = rest.partition("agents:\n")
    if not secrets_line or not agents_line:
        raise ValueError("the policy needs a secrets: and an agents: section")
    return "".join([head, secrets_line, "\n".join(filler_secrets(count)), "\n", between,
                    agents_line, "\n".join(filler_agents(count)), "\n", tail])


def standalone(count: int) -> str:
    """A policy of ``count`` filler secrets alone, for `policy check`."""
    return with_filler("version: 1\nsecrets:\nagents:\n", count)
