"""`broker-proxy env --token TOKEN`: the shell exports an agent needs."""

from __future__ import annotations

import argparse
import shlex

from broker_proxy.cli.common import home_of, proxy_address, running_proxy
from broker_proxy.cli.errors import CliError
from broker_proxy.grants.tokens import parse_token

# Every CA variable the usual clients read: Python ssl/httpx, requests, curl, Node, git.
CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO")


def register(commands: argparse._SubParsersAction) -> None:
    env = commands.add_parser("env", help="print the shell exports an agent needs")
    env.add_argument("--token", required=True, help="the grant token")
    env.add_argument("--agent", default="agent", help="user part of the proxy URL")
    env.set_defaults(handler=env_command)


def agent_environment(proxy_url: str, ca_path: str) -> dict[str, str]:
    variables = {"HTTPS_PROXY": proxy_url, "HTTP_PROXY": proxy_url,
                 "https_proxy": proxy_url, "http_proxy": proxy_url,
                 "NO_PROXY": "", "no_proxy": ""}
    variables.update({name: ca_path for name in CA_VARIABLES})
    return variables


def env_command(args: argparse.Namespace) -> int:
    if parse_token(args.token) is None:
        raise CliError("that is not a grant token (they start with bpt_)")
    home = home_of(args)
    info = running_proxy(home)
    ca = str(info["ca"]) if info else str(home.certs / "mitmproxy-ca-cert.pem")
    from urllib.parse import quote

    url = f"http://{quote(args.agent, safe='')}:{args.token}@{proxy_address(home)}"
    for name, value in agent_environment(url, ca).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0
