"""`broker-proxy demo`."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="show the whole product working on this machine (offline, < 30 s)",
        description="Start a local HTTPS API and the proxy, issue a grant, make an agent request "
        "that works with only a placeholder, try an exfiltration that is blocked, and show the "
        "audit trail. Uses a temporary home; touches nothing of yours.",
    )
    demo.set_defaults(handler=demo_command)


def demo_command(args: argparse.Namespace) -> int:
    from broker_proxy.devtools.demo import run_demo

    return run_demo()
