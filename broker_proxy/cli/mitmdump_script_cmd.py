"""`broker-proxy mitmdump-script`: the file to give `mitmdump -s`, wherever pip installed it.

The script ships inside the package (``broker_proxy/addons/broker.py``), never as a top-level
``addons`` package, so its path depends on the environment: this prints it.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from broker_proxy.cli.errors import CliError

SCRIPT_MODULE = "broker_proxy.addons.broker"


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    command = commands.add_parser(
        "mitmdump-script", help="print the path of the mitmdump -s entry point",
        description="Print the path of the broker's mitmdump script, for setups that already run "
        'mitmdump: mitmdump -s "$(broker-proxy mitmdump-script)" --set broker_home=DIR '
        "--set broker_policy=FILE. `broker-proxy run` is the recommended way to run the broker.")
    command.set_defaults(handler=script_command)


def script_path() -> Path:
    spec = importlib.util.find_spec(SCRIPT_MODULE)
    if spec is None or spec.origin is None:
        raise CliError(f"the mitmdump script ({SCRIPT_MODULE}) is not installed")
    return Path(spec.origin)


def script_command(args: argparse.Namespace) -> int:
    print(script_path())
    return 0
