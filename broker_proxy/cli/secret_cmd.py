"""`broker-proxy secret set|list|rm|forget-retired`: values come from stdin or a hidden prompt,
never argv.

`set` keeps the value it replaces as *retired* (scrubbed from answers, never injected) for
``--retire-for``, and returns once every running proxy of the home confirmed it scrubs for the
new value (see runtime/vault_watch.py), or says in one line which did not.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from datetime import UTC, datetime, timedelta

from broker_proxy.cli.common import add_policy_option, home_of, policy_file_of
from broker_proxy.cli.errors import CliError
from broker_proxy.durations import DurationError, format_duration, parse_duration
from broker_proxy.policy.loader import PolicyError, load_policy
from broker_proxy.secrets.backends import SecretResolver
from broker_proxy.secrets.master_key import describe_key_location, load_or_create_master_key
from broker_proxy.secrets.vault import DEFAULT_RETIRE_FOR, Vault, check_secret_name

DEFAULT_WAIT = "10s"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    set_.add_argument("--retire-for", metavar="DURATION",
                      help="keep the replaced value retired this long: running proxies scrub it "
                      "from answers (it usually stays valid at the provider for a while) and "
                      "never inject it (default: the policy's retire_for for NAME, else "
                      f"{format_duration(DEFAULT_RETIRE_FOR)}; at most 30d)")
    add_policy_option(set_)
    set_.add_argument("--wait", metavar="DURATION", default=DEFAULT_WAIT,
                      help="wait at most this long for every running proxy of this home to "
                      "confirm it scrubs for the new value (default: %(default)s)")
    set_.set_defaults(handler=set_secret)
    list_ = sub.add_parser(
        "list", help="show secret names, backends and whether each resolves (never values)"
    )
    add_policy_option(list_)
    list_.set_defaults(handler=list_secrets)
    rm = sub.add_parser("rm", help="remove a secret from the vault (its value stays retired)",
                        description="Remove NAME from the vault. Its value stays retired "
                        "(scrubbed from answers, never injected) for --retire-for.")
    rm.add_argument("name", metavar="NAME")
    rm.add_argument("--retire-for", metavar="DURATION",
                    help="how long the removed value stays retired (default: the policy's "
                    f"retire_for for NAME, else {format_duration(DEFAULT_RETIRE_FOR)})")
    add_policy_option(rm)
    rm.set_defaults(handler=remove_secret)
    forget = sub.add_parser(
        "forget-retired", help="stop scrubbing NAME's retired values (drop them from the vault)",
        description="Drop every retired value of NAME from the vault: answers are no longer "
        "scrubbed for them. Do this only once the provider no longer accepts them.")
    forget.add_argument("name", metavar="NAME")
    forget.set_defaults(handler=forget_retired)


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


def _duration(text: str, option: str) -> timedelta:
    try:
        return parse_duration(text)
    except DurationError as error:
        raise CliError(f"{option}: {error}") from None


def _retire_window(args: argparse.Namespace, name: str) -> timedelta:
    """--retire-for, else the policy's ``retire_for`` for the secret, else 30 days.

    A policy that does not load does not stop a rotation: the default applies, said on stderr.
    """
    if args.retire_for is not None:
        return _duration(args.retire_for, "--retire-for")
    policy_file = policy_file_of(args)
    if not policy_file.exists():
        return DEFAULT_RETIRE_FOR
    try:
        secret = load_policy(policy_file).secrets.get(name)
    except (PolicyError, OSError):
        print(f"warning: the policy {policy_file} does not load; the replaced value stays "
              f"retired for the default {format_duration(DEFAULT_RETIRE_FOR)}", file=sys.stderr)
        return DEFAULT_RETIRE_FOR
    return secret.retire_for if secret is not None and secret.retire_for else DEFAULT_RETIRE_FOR


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def set_secret(args: argparse.Namespace) -> int:
    from broker_proxy.runtime.vault_watch import wait_for_proxies

    name = check_secret_name(args.name)
    retire_for = _retire_window(args, name)
    wait = _duration(args.wait, "--wait")
    value = read_value(name)
    now = datetime.now(UTC)
    retired = open_vault(args, create=True).set(name, value, retire_for=retire_for, now=now)
    print(f"secret {name} stored in the vault")
    if retired:
        print(f"the value it replaced stays retired (scrubbed from answers, never injected) "
              f"until {_when(now + retire_for)}; drop it sooner with: broker-proxy secret "
              f"forget-retired {name}")
    answers = wait_for_proxies(home_of(args), wait.total_seconds())
    if answers.silent:
        pids = ", ".join(str(pid) for pid in answers.silent)
        print(f"warning: running proxy process {pids} did not confirm within {args.wait} that it "
              "scrubs for the new value; it does once it reads the vault", file=sys.stderr)
    elif answers.confirmed:
        print(f"running proxy confirmed: answers are scrubbed for the new value "
              f"({len(answers.confirmed)} process{'es' if len(answers.confirmed) > 1 else ''})")
    else:
        print("no running proxy of this home answered; one started later reads the new value")
    return 0


def list_secrets(args: argparse.Namespace) -> int:
    home = home_of(args)
    policy_file = policy_file_of(args)
    vault_names: list[str] = []
    retired = {}
    if home.vault.exists():
        contents = open_vault(args, create=False).contents()
        vault_names = sorted(contents.secrets)
        retired = contents.retired
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
    listed = {row[0] for row in rows}
    rows += [(n, "vault", "removed") for n in sorted(retired) if n not in listed]
    if not rows:
        print("no secrets (add one with: broker-proxy secret set NAME)")
        return 0
    width = max(len(r[0]) for r in rows)
    source_width = max(len(r[1]) for r in rows)
    for name, source, status in rows:
        print(f"{name:<{width}}  {source:<{source_width}}  {status}")
        # Never the value: when it was retired and until when it is scrubbed.
        for entry in retired.get(name, ()):
            print(f"{'':<{width}}  retired since {_when(entry.since)}, scrubbed until "
                  f"{_when(entry.until)}")
    if home.vault.exists():
        print(f"(vault key: {describe_key_location(home)})")
    return 0


def remove_secret(args: argparse.Namespace) -> int:
    name = check_secret_name(args.name)
    retire_for = _retire_window(args, name)
    if not open_vault(args, create=False).remove(name, retire_for=retire_for):
        raise CliError(f"no secret {name} in the vault")
    print(f"secret {name} removed; its value stays retired (scrubbed from answers) until "
          f"{_when(datetime.now(UTC) + retire_for)}")
    return 0


def forget_retired(args: argparse.Namespace) -> int:
    name = check_secret_name(args.name)
    dropped = open_vault(args, create=False).forget_retired(name)
    if not dropped:
        raise CliError(f"no retired value of {name} in the vault")
    print(f"forgot {dropped} retired value{'s' if dropped > 1 else ''} of {name}: answers are "
          f"no longer scrubbed for {'them' if dropped > 1 else 'it'}")
    return 0
