"""`broker-proxy secret set|list|rm`: values come from stdin or a hidden prompt, never argv."""

from __future__ import annotations

import argparse
import getpass
import sys

from broker_proxy.cli.common import add_policy_option, home_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.policy.loader import load_policy
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.master_key import describe_key_location, load_or_create_master_key
from broker_proxy.secrets.vault import Vault, check_secret_name


def register(commands: argparse._SubParsersAction) -> None:
    secret = commands.add_parser("secret", help="manage secrets in the encrypted vault")
    sub = secret.add_subparsers(dest="secret_command", metavar="ACTION", required=True)
    set_ = sub.add_parser(
        "set",
        help="store a secret in the vault",
        description="Store NAME's value in the vault. The value is read from stdin when it is "
        "not a terminal (one trailing newline is dropped), else from a hidden prompt. It is "
        "never accepted on the command line, where other users and shell history could see it.",
    )
    set_.add_argument("name", metavar="NAME")
    set_.set_defaults(handler=set_secret)
    list_ = sub.add_parser(
        "list", help="show secret names, backends and whether each resolves (never values)"
    )
    add_policy_option(list_)
    list_.set_defaults(handler=list_secrets)
    rm = sub.add_parser("rm", help="remove a secret from the vault")
    rm.add_argument("name", metavar="NAME")
    rm.set_defaults(handler=remove_secret)


def open_vault(args: argparse.Namespace, *, create: bool) -> Vault:
    home = home_of(args)
    if create:
        home.ensure()
    return Vault(home.vault, load_or_create_master_key(home, create=create))


def read_value(name: str) -> str:
    if sys.stdin is None:
        raise CliError("no value: pipe it on stdin or run in a terminal")
    if sys.stdin.isatty():
        value = getpass.getpass(f"value for {name}: ")
        if getpass.getpass("again: ") != value:
            raise CliError("the two values differ; nothing stored")
    else:
        value = sys.stdin.read()
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        raise CliError("empty value; nothing stored")
    return value


def set_secret(args: argparse.Namespace) -> int:
    name = check_secret_name(args.name)
    value = read_value(name)
    open_vault(args, create=True).set(name, value)
    print(f"secret {name} stored in the vault")
    return 0


def list_secrets(args: argparse.Namespace) -> int:
    home = home_of(args)
    policy_file = policy_file_of(args)
    vault_names: list[str] = []
    if home.vault.exists():
        vault_names = open_vault(args, create=False).names()
    rows: list[tuple[str, str, str]] = []
    if policy_file.exists():
        policy = load_policy(policy_file)
        resolver = SecretResolver(home, base_dir=policy_file.parent)
        for name in sorted(policy.secrets):
            ok, reason = resolver.check(policy.secrets[name])
            rows.append((name, policy.secrets[name].source, "ok" if ok else f"missing: {reason}"))
        rows += [(n, "vault", "not in policy") for n in vault_names if n not in policy.secrets]
    else:
        rows = [(n, "vault", "stored (no policy to check against)") for n in vault_names]
    if not rows:
        print("no secrets (add one with: broker-proxy secret set NAME)")
        return 0
    width = max(len(r[0]) for r in rows)
    source_width = max(len(r[1]) for r in rows)
    for name, source, status in rows:
        print(f"{name:<{width}}  {source:<{source_width}}  {status}")
    if home.vault.exists():
        print(f"(vault key: {describe_key_location(home)})")
    return 0


def remove_secret(args: argparse.Namespace) -> int:
    name = check_secret_name(args.name)
    if not open_vault(args, create=False).remove(name):
        raise CliError(f"no secret {name} in the vault")
    print(f"secret {name} removed")
    return 0
