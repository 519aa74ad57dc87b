"""`broker-proxy run`: the proxy itself.

Three steps: argparse parses, ``configure`` makes the one RunConfig (flags, environment,
defaults: broker_proxy/runtime/run_config.py), ``serve`` runs one BrokerProcess
(broker_proxy/runtime/process.py). `--print-config` stops after the second and prints it.
Every default lives in RunConfig: the options below default to None ("not given").
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from broker_proxy.cli.common import add_policy_option
from broker_proxy.cli.errors import CliError, describe_error
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.home import Home
from broker_proxy.policy.loader import PolicyError, load_policy
from broker_proxy.runtime import run_setup
from broker_proxy.runtime.run_config import (
    DEFAULT_GRANT_RETENTION,
    RunConfig,
    RunConfigError,
    build_run_config,
    policy_rows,
)

_DURATION = {"metavar": "DURATION"}
# (flags, argparse keywords): the options of `run` besides --policy and --store.
_OPTIONS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--listen",), {"metavar": "HOST:PORT", "help": "where agents connect (default "
                     "127.0.0.1:8080; port 0 picks one)"}),
    (("--metrics",), {"metavar": "HOST:PORT", "help": "Prometheus metrics address (default "
                      "127.0.0.1:9464; 'off' disables)"}),
    (("--admin",), {"metavar": "HOST:PORT", "help": "admin API address (default 127.0.0.1:8081; "
                    "'off' disables); bearer token in <home>/admin.token"}),
    (("--workers",), {"type": int, "metavar": "N", "help": "proxy processes sharing the "
                      "listening port (default 1); the first serves metrics and the admin API"}),
    (("--worker-of-group",), {"action": "store_true", "help": argparse.SUPPRESS}),
    (("--certs",), {"metavar": "DIR", "help": "directory of the proxy's CA (default "
                    "<home>/certs)"}),
    (("--upstream-ca",), {"metavar": "PEM", "action": "append", "help": "also trust this CA "
                          "for upstream servers (private APIs, tests)"}),
    (("--resolve",), {"metavar": "HOST[:PORT]=IP[:PORT]", "action": "append", "help": "connect "
                      "to IP (and PORT) for HOST (and PORT), like curl's --connect-to: split "
                      "DNS, a local stand-in for an API; repeatable"}),
    (("--replica-id",), {"metavar": "ID", "help": "name of this replica in every audit record "
                         "(default: one made once and kept in <home>/replica.id)"}),
    (("--audit-max-bytes",), {"type": "audit_max_bytes", "metavar": "BYTES", "help": "rotate "
                              "the audit log when it reaches this size (default: never; at "
                              "least 4096; K/M/G suffixes)"}),
    (("--audit-checkpoint-every",), {**_DURATION, "help": "write a signed audit checkpoint "
                                     "this often while the log grows (default 5m; 'off' turns "
                                     "checkpoints off)"}),
    (("--audit-checkpoint-records",), {"type": int, "metavar": "N", "help": "also write one "
                                       "after every N records (default 1000; 0: by time only)"}),
    (("--audit-checkpoint-copy",), {"action": "append", "metavar": "FILE", "help": "also "
                                    "append every checkpoint to FILE (another disk or machine), "
                                    "so a log cut together with <home>/audit.checkpoints is "
                                    "still caught; repeatable"}),
    (("--request-head-timeout",), {**_DURATION, "help": "a client must send a whole request "
                                   "head within this long of connecting or of its last answer "
                                   "(default 30s)"}),
    (("--upstream-connect-timeout",), {**_DURATION, "help": "give up connecting upstream after "
                                       "this long, and again on the upstream TLS handshake; "
                                       "the agent gets 502 upstream_error (default 10s)"}),
    (("--upstream-read-timeout",), {**_DURATION, "help": "give up waiting for an upstream's "
                                    "answer (its headers) this long after the request was "
                                    "decided; the agent gets 502 upstream_error, kind "
                                    "read_timeout (default 5m)"}),
    (("--idle-timeout",), {**_DURATION, "help": "close a connection with no byte either way "
                           "for this long, e.g. an upstream gone silent (default 10m: LLM "
                           "answers can pause for minutes)"}),
    (("--otlp-endpoint",), {"metavar": "URL", "help": "also send every audit record to this "
                            "OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (from the log, on "
                            "its own thread; default: off)"}),
    (("--grant-retention",), {**_DURATION, "help": "delete grants from the store this long "
                              "after they ended (expired, revoked or denied; a used-up grant "
                              "ends at its expiry), a batch at a time, each batch named in a "
                              "grants_purged audit record; 'off' keeps them (default "
                              f"{DEFAULT_GRANT_RETENTION})"}),
    (("--console-session-ttl",), {**_DURATION, "help": "how long a web console sign-in lasts "
                                  "(default 8h)"}),
    (("--print-config",), {"action": "store_true", "help": "print every setting, its value and "
                           "where it came from (default, flag, env, policy), then exit "
                           "without starting anything"}),
)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "run",
        help="run the proxy",
        description="Run the credential-brokering proxy. Agents set HTTPS_PROXY to "
        "http://AGENT:GRANT_TOKEN@LISTEN. Refuses to start on a bad policy.",
    )
    add_policy_option(run)
    add_store_option(run)
    for flags, keywords in _OPTIONS:
        if keywords.get("type") == "audit_max_bytes":
            keywords = {**keywords, "type": _audit_max_bytes}
        run.add_argument(*flags, **keywords)
    run.set_defaults(handler=run_command)


def _audit_max_bytes(text: str) -> int:
    scale = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(text[-1:].upper(), 1)
    digits = text[:-1] if scale > 1 else text
    if not digits.isdigit() or int(digits) * scale < 4096:
        raise argparse.ArgumentTypeError(f"must be a size of at least 4096 bytes, got {text!r}")
    return int(digits) * scale


def run_command(args: argparse.Namespace) -> int:
    config = configure(args)
    if args.print_config:
        print_config(config)
        return 0
    return serve(config, getattr(args, "raw_argv", []))


def configure(args: argparse.Namespace) -> RunConfig:
    """Flags, then the environment (read here, once), then the defaults."""
    try:
        return build_run_config(args, os.environ)
    except RunConfigError as error:
        raise CliError(str(error)) from None


def print_config(config: RunConfig) -> None:
    """One line per setting: name, value (never a secret or a URL's password), source."""
    rows = config.describe()
    try:
        rows += policy_rows(load_policy(config.policy_file))
    except (PolicyError, OSError) as error:
        reason = describe_error(error) or type(error).__name__
        rows.append(("policy", f"not read: {reason.splitlines()[0]}", "policy"))
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value}  ({source})")


def serve(config: RunConfig, argv: list[str]) -> int:
    """Start every stage of the process, serve until a signal, stop them in reverse."""
    # Imported here: it loads mitmproxy, which no other command (nor --print-config) needs.
    from broker_proxy.runtime.process import BrokerProcess, start_checked

    try:
        start_checked(with_reuse_port=config.workers > 1 or config.worker_of_group)
        process = BrokerProcess(config, argv=argv)
        process.start()
    except RunConfigError as error:
        raise CliError(str(error)) from None

    def on_ready(host: str, port: int) -> None:
        info = process.announce(host, port)
        if not info:
            return
        admin = info.get("admin")
        consoles = (f"admin API: http://{admin}, console: http://{admin}/ui/" if admin
                    else "admin API: off")
        print(f"broker-proxy listening on http://{host}:{port}"
              f" (metrics: {process.metrics_address or 'off'}, {consoles}, CA: {info['ca']})",
              flush=True)

    try:
        process.serve(on_ready)
    finally:
        print("broker-proxy stopped", file=sys.stderr, flush=True)
    return 0


def home_certs(home: Home, explicit: str | None) -> Path:
    """The home's one CA directory (see runtime/run_setup.py), for the CLI's messages."""
    try:
        return run_setup.home_certs(home, explicit)
    except RunConfigError as error:
        raise CliError(str(error)) from None


_remove_own_runtime = run_setup.remove_own_runtime  # tests/test_e2e_home_lock.py
