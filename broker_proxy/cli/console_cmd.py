"""`broker-proxy console`: a one-time sign-in link to the running proxy's web console.

The link's code sits after `#`, which browsers never send to a server or write to its logs; the
page trades it for a session cookie and removes it from the address bar and history at once.
It works once, within two minutes.
"""

from __future__ import annotations

import argparse
import os
import sys
import webbrowser

from broker_proxy.cli.common import actor_name, actor_of, default_actor, home_of, running_proxy
from broker_proxy.cli.request_cmd import admin_call


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = commands.add_parser(
        "console", help="open the web console (one-time sign-in link)",
        description="Print a one-time sign-in link to the running proxy's web console (/ui/ on "
        "the admin address) and open it in a browser when there is one.")
    console.add_argument("--no-browser", action="store_true", help="only print the link")
    console.add_argument("--as", dest="by", type=actor_name, default=None, metavar="NAME",
                         help="who signs in with the link: every decision made in that "
                         f"session is audited as console:NAME (default: the OS user, "
                         f"{default_actor()})")
    console.set_defaults(handler=console_command)


def console_command(args: argparse.Namespace) -> int:
    home = home_of(args)
    link = admin_call(home, "POST", "/v1/console/login-links", {"name": actor_of(args)})
    info = running_proxy(home) or {}
    url = f"http://{info.get('admin')}{link['path']}"
    print(f"console: {url}")
    print(f"  (works once, within two minutes; signs in as {link['name']})")
    has_display = sys.platform == "darwin" or bool(os.environ.get("DISPLAY")
                                                   or os.environ.get("WAYLAND_DISPLAY"))
    if has_display and not args.no_browser:
        webbrowser.open(url)
    return 0
