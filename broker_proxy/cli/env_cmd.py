"""`broker-proxy env --token TOKEN`: the shell exports an agent needs."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Mapping

from broker_proxy.cli.common import home_of, proxy_address, running_proxy, store_url_of
from broker_proxy.cli.errors import CliError
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.grants.factory import open_grant_store
from broker_proxy.grants.store import GrantStoreError
from broker_proxy.grants.tokens import parse_token
from broker_proxy.time_source import utc_now

# Every CA variable we know a client or runtime reads: Python ssl/httpx, requests, curl, Node,
# git, botocore (AWS_CA_BUNDLE wins over the others there), Deno, pip, Cargo, npm. A variable
# left pointing at another CA makes that client refuse the proxy's certificates.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO", "AWS_CA_BUNDLE", "DENO_CERT",
                "PIP_CERT", "CARGO_HTTP_CAINFO", "npm_config_cafile")
# Local services keep working without the proxy: it would refuse them (destination_not_granted).
LOOPBACK = ("localhost", "127.0.0.1", "::1")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    env = commands.add_parser(
        "env", help="print the shell exports an agent needs",
        description="Check the grant token against this home's grant store and print the "
        "exports of an agent using it: the proxy URL (with the grant's agent name), the CA "
        "variables and NO_PROXY (the caller's, plus loopback unless --no-loopback-bypass).")
    env.add_argument("--token", required=True, help="the grant token")
    env.add_argument("--agent", default=None, help=argparse.SUPPRESS)  # the grant's agent wins
    add_loopback_option(env)
    add_store_option(env)
    env.set_defaults(handler=env_command)


def add_loopback_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-loopback-bypass", dest="loopback_bypass", action="store_false",
                        help="send loopback traffic (localhost, 127.0.0.1, ::1) through the proxy "
                        "too; by default it is added to NO_PROXY")


def no_proxy_value(caller: Mapping[str, str], *, loopback: bool) -> str:
    """The caller's NO_PROXY and no_proxy (both kept), plus loopback when asked, deduplicated."""
    entries: list[str] = []
    for name in ("NO_PROXY", "no_proxy"):
        for entry in caller.get(name, "").split(","):
            entry = entry.strip()
            if entry and entry not in entries:
                entries.append(entry)
    if loopback:
        entries += [entry for entry in LOOPBACK if entry not in entries]
    return ",".join(entries)


def agent_environment(proxy_url: str, ca_path: str, *, no_proxy: str = "") -> dict[str, str]:
    variables = {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url,
                 "https_proxy": proxy_url, "http_proxy": proxy_url,
                 "NO_PROXY": no_proxy, "no_proxy": no_proxy}
    variables.update({name: ca_path for name in CA_VARIABLES})
    # git (libcurl) otherwise opens each tunnel without credentials, waits for the 407 and
    # asks again: basic sends the grant token on the first CONNECT.
    variables["GIT_HTTP_PROXY_AUTHMETHOD"] = "basic"
    return variables


def env_command(args: argparse.Namespace) -> int:
    parsed = parse_token(args.token)
    home = home_of(args)
    grant = None
    if parsed is not None:
        try:
            store = open_grant_store(home, store_url_of(args))
        except GrantStoreError as error:
            raise CliError(str(error)) from None
        try:
            grant = store.authenticate(args.token)
        finally:
            store.close()
    if grant is None:
        # Same words whatever was wrong with it: a made-up token learns nothing.
        raise CliError(f"unknown grant token: no grant of the store of home {home.root} has it")
    state = grant.state_at(utc_now())
    if state not in ("active", "pending"):
        raise CliError(f"grant {grant.id} is {state.replace('_', ' ')}; issue a new one")
    if state == "pending":
        print(f"broker-proxy: grant {grant.id} waits for approval; requests get 403 until "
              f"`broker-proxy grant approve {grant.id}`", file=sys.stderr)
    info = running_proxy(home)
    if info is None:
        print(f"broker-proxy: no proxy is running for home {home.root}; these exports are for "
              f"`broker-proxy run` on {proxy_address(home)}", file=sys.stderr)
    from urllib.parse import quote

    from broker_proxy.cli.ca_cmd import home_ca_path

    ca = str(info["ca"]) if info else str(home_ca_path(home))
    agent = args.agent or grant.agent
    url = f"http://{quote(agent, safe='')}:{args.token}@{proxy_address(home)}"
    no_proxy = no_proxy_value(os.environ, loopback=args.loopback_bypass)
    for name, value in agent_environment(url, ca, no_proxy=no_proxy).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0
