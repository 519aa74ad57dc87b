"""The `broker-proxy` command line.

Every failure is one clear line on stderr and a non-zero exit, never a traceback: the errors
the core raises are typed, and each maps to a message written for the operator.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from broker_proxy import __version__
from broker_proxy.cli import (
    audit_cmd,
    ca_cmd,
    console_cmd,
    env_cmd,
    grant_cmd,
    mitmdump_script_cmd,
    policy_cmd,
    request_cmd,
    run_cmd,
    secret_cmd,
)
from broker_proxy.cli.errors import CliError, describe_error
from broker_proxy.runtime.run_config import debug_setting

EXIT_FAILURE = 1
EXIT_INTERNAL = 70


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="broker-proxy",
        description="A credential broker for AI agents: agents send placeholders through this "
        "proxy, which swaps in real secrets only for the destinations their grant allows.",
    )
    parser.add_argument("--version", action="version", version=f"broker-proxy {__version__}")
    parser.add_argument(
        "--home",
        metavar="DIR",
        help="state directory: vault, grants, audit log, keys, CA "
        "(default: $BROKER_PROXY_HOME or ~/.broker-proxy)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (run_cmd, policy_cmd, secret_cmd, grant_cmd, request_cmd, console_cmd, env_cmd,
                   audit_cmd, ca_cmd, mitmdump_script_cmd):
        module.register(commands)
    from broker_proxy.cli import demo_cmd

    demo_cmd.register(commands)
    from broker_proxy.cli import exec_cmd

    exec_cmd.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # `run --workers` starts more workers with the same command line.
    args.raw_argv = list(argv) if argv is not None else sys.argv[1:]
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("broker-proxy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return _reader_left()
    except CliError as error:
        print(f"broker-proxy: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        message = describe_error(error)
        if message is None:
            if debug_setting(os.environ):
                raise
            print(
                f"broker-proxy: internal error ({type(error).__name__}); "
                "set BROKER_PROXY_DEBUG=1 for details",
                file=sys.stderr,
            )
            return EXIT_INTERNAL
        print(message, file=sys.stderr)
        return EXIT_FAILURE


def _reader_left() -> int:
    """The reader of stdout went away (`policy schema | head`): that is the reader's choice,
    not a failure. Output still buffered would raise again at exit, so stdout goes nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
