"""What several commands share: the home, the policy, and the running proxy's addresses."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any

from broker_proxy.grants.actions import local_operator
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.policy.model import Policy
from broker_proxy.runtime.run_config import home_setting, policy_setting, store_setting

DEFAULT_LISTEN = "127.0.0.1:8080"


def home_of(args: argparse.Namespace) -> Home:
    return home_setting(getattr(args, "home", None), os.environ)


def add_policy_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="policy file (default: $BROKER_PROXY_POLICY or <home>/policy.yaml)",
    )


def policy_file_of(args: argparse.Namespace) -> Path:
    return policy_setting(home_of(args), getattr(args, "policy", None), os.environ)


def store_url_of(args: argparse.Namespace) -> str | None:
    """--store, else $BROKER_PROXY_STORE, else None (the home's SQLite file): `run`'s rule."""
    return store_setting(getattr(args, "store", None), os.environ)


def load_policy_of(args: argparse.Namespace) -> Policy:
    return load_policy(policy_file_of(args))


def running_proxy(home: Home) -> dict[str, Any] | None:
    """The addresses `run` recorded, if that proxy is still alive."""
    try:
        info = json.loads(home.runtime.read_text())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def proxy_address(home: Home) -> str:
    info = running_proxy(home)
    return str(info["listen"]) if info else DEFAULT_LISTEN


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


_ACTOR = re.compile(r"[A-Za-z0-9._@+-][A-Za-z0-9._@:+-]{0,63}")
_ACTOR_UNSAFE = re.compile(r"[^A-Za-z0-9._@:+-]")


def actor_name(value: str) -> str:
    """argparse type for a `--by` NAME: what an audit `by` may hold."""
    if not _ACTOR.fullmatch(value):
        raise argparse.ArgumentTypeError("must be 1-64 letters, digits or ._@:+-")
    return value


def default_actor() -> str:
    """The OS user, in the characters an audit `by` allows."""
    return _ACTOR_UNSAFE.sub("_", local_operator())[:64].lstrip(":") or "unknown"


def add_by_option(parser: argparse.ArgumentParser, what: str = "decides") -> None:
    """`--by NAME`: who acts, for the audit record (default: the OS user)."""
    parser.add_argument("--by", type=actor_name, default=None, metavar="NAME",
                        help=f"who {what}, for the audit log (default: the OS user, "
                        f"{default_actor()})")


def actor_of(args: argparse.Namespace) -> str:
    return getattr(args, "by", None) or default_actor()
