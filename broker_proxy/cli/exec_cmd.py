"""`broker-proxy exec ... -- CMD`: one task, one grant, gone when the task ends.

The grant is issued for the running proxy of this home, CMD runs with the proxy environment and
each secret's placeholder, and the grant is revoked as soon as CMD ends, however it ends: a normal
exit, a kill, or a signal to exec itself (forwarded to CMD first). Only a SIGKILL of exec itself
escapes that; the grant's TTL bounds that case.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import FrameType

from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.cli.common import (
    add_policy_option,
    home_of,
    policy_file_of,
    running_proxy,
    store_url_of,
)
from broker_proxy.cli.env_cmd import add_loopback_option, agent_environment, no_proxy_value
from broker_proxy.cli.errors import CliError
from broker_proxy.cli.limit_options import add_limit_options
from broker_proxy.cli.store_option import add_store_option
from broker_proxy.durations import parse_duration
from broker_proxy.grants.actions import change_grant, issue_audited, local_operator
from broker_proxy.grants.factory import open_grant_store
from broker_proxy.grants.issuer import IssuedGrant, format_duration
from broker_proxy.grants.store import GrantError, GrantStateError, GrantStore
from broker_proxy.policy.loader import load_policy
from broker_proxy.policy.model import Policy
from broker_proxy.secrets.master_key import ENV_VAR as MASTER_KEY_VARIABLE
from broker_proxy.time_source import utc_now

APPROVAL_POLL = 0.5  # seconds between looks at a pending grant
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# Proxy settings of the caller's shell would fight ours (ALL_PROXY wins in some clients).
_PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = commands.add_parser(
        "exec",
        help="run a command under a fresh grant, revoked when it ends",
        description="Issue a grant for the running proxy of this home, run CMD with HTTPS_PROXY, "
        "the CA variables and each secret's placeholder in the variable the policy names "
        "(env:), and revoke the grant when CMD exits, is killed or exec is interrupted. "
        "Exits with CMD's exit code (128+N if a signal N ended it).",
        usage="broker-proxy exec --agent A --task TEXT --secret NAME... [--ttl T] "
        "[--max-uses N] [--wait-approval T] [--no-loopback-bypass] [--policy FILE] "
        "[--store URL] -- CMD...",
    )
    run.add_argument("--agent", required=True, help="agent name from the policy")
    run.add_argument("--task", required=True, help="what the task is, for the approver and audit")
    run.add_argument("--secret", dest="secrets", action="append", required=True, metavar="NAME",
                     help="a secret to grant (repeat for more)")
    run.add_argument("--ttl", help="grant lifetime, e.g. 15m (default: 15m or the agent's max_ttl)")
    run.add_argument("--max-uses", type=int, metavar="N", help="requests that may carry a secret")
    add_limit_options(run)
    run.add_argument("--wait-approval", default="5m", metavar="T",
                     help="how long to wait for a human approval when the policy wants one "
                     "(default 5m)")
    add_loopback_option(run)
    add_policy_option(run)
    add_store_option(run)
    run.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD",
                     help="the command to run")
    run.set_defaults(handler=exec_command)


@dataclass
class _Signals:
    """Signals exec received; forwarded to CMD once it runs, remembered until then."""

    received: list[int] = field(default_factory=list)
    child: subprocess.Popen[bytes] | None = None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        # Never raise here: the grant must be revoked by the normal path, not skipped over.
        self.received.append(signum)
        if self.child is not None and self.child.poll() is None:
            if len(self.received) > 1:
                self.child.kill()  # asked twice: stop waiting for a clean exit
            else:
                self.child.send_signal(signum)


def exec_command(args: argparse.Namespace) -> int:
    command = list(args.command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise CliError("give the command to run after --, e.g. exec ... -- python job.py")
    wait_limit = parse_duration(args.wait_approval)
    home = home_of(args)
    info = running_proxy(home)
    if info is None:
        raise CliError(f"no broker-proxy is running for home {home.root}; start it with "
                       "`broker-proxy run` first")
    # The running proxy's policy bounds every request, so it also bounds the grant.
    policy_file = Path(args.policy) if args.policy else Path(info.get("policy") or
                                                             policy_file_of(args))
    policy = load_policy(policy_file)
    ttl = parse_duration(args.ttl) if args.ttl else None

    signals = _Signals()
    previous = {signum: signal.signal(signum, signals.handle) for signum in FORWARDED_SIGNALS}
    store = open_grant_store(home.ensure(), store_url_of(args))
    audit = AuditLog.open(home.audit_log, home.audit_key)
    issued: IssuedGrant | None = None
    try:
        issued = issue_audited(policy, store, audit, agent=args.agent, task=args.task,
                               secrets=args.secrets, ttl=ttl, max_uses=args.max_uses,
                               now=utc_now(), proxy_url_base=str(info["listen"]),
                               by=local_operator(), rates=args.rates,
                               concurrency=args.concurrency, cost_usd=args.cost_usd,
                               input_tokens=args.input_tokens,
                               output_tokens=args.output_tokens)
        grant_id = issued.grant.id
        _say(f"grant {grant_id} issued for agent {args.agent}; it is revoked when the command "
             "ends")
        if issued.grant.state_at(utc_now()) == "pending":
            _wait_for_approval(store, grant_id, wait_limit, signals)
        if signals.received:
            return 128 + signals.received[0]
        environment = child_environment(policy, issued, str(info["ca"]),
                                        loopback_bypass=args.loopback_bypass)
        try:
            signals.child = subprocess.Popen(command, env=environment)
        except OSError as error:
            raise CliError(f"cannot run {command[0]}: {error.strerror}", exit_code=127) from None
        if signals.received and signals.child.poll() is None:
            signals.child.send_signal(signals.received[-1])  # arrived while it was starting
        return exit_status(signals.child.wait())
    finally:
        if signals.child is not None and signals.child.poll() is None:
            signals.child.kill()  # exec itself failed: CMD must not outlive its grant
            signals.child.wait()
        if issued is not None:
            _revoke(store, audit, issued.grant.id)
        store.close()
        audit.close()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def child_environment(policy: Policy, issued: IssuedGrant, ca_path: str, *,
                      loopback_bypass: bool = True) -> dict[str, str]:
    """The caller's environment minus anything that could hold a real secret, plus the proxy
    settings and the placeholders. The caller's NO_PROXY is kept (and loopback added)."""
    no_proxy = no_proxy_value(os.environ, loopback=loopback_bypass)
    dropped = {MASTER_KEY_VARIABLE, *_PROXY_VARIABLES}
    # A secret the proxy reads from an env: source may sit in the caller's environment too.
    dropped |= {s.source.removeprefix("env:") for s in policy.secrets.values()
                if s.source.startswith("env:")}
    environment = {name: value for name, value in os.environ.items()
                   if name.upper() not in {d.upper() for d in dropped}}
    assert issued.proxy_url is not None  # issued with the running proxy's address
    environment.update(agent_environment(issued.proxy_url, ca_path, no_proxy=no_proxy))
    for name, placeholder in issued.placeholders.items():
        secret = policy.secrets[name]
        if secret.sign == "aws-sigv4":
            for variable in _AWS_CALLER_CREDENTIALS:
                environment.pop(variable, None)
            environment.update(aws_placeholder_credentials(placeholder, secret.env))
        elif secret.env:
            environment[secret.env] = placeholder
    return environment


# An AWS SDK signs only with a complete set of credentials; without a secret key it goes on to
# the instance metadata service (refused through the proxy) and fails with NoCredentialsError.
# The proxy re-signs, so the secret key only has to exist; this one says what it is.
AWS_PLACEHOLDER_SECRET_KEY = "broker-proxy-placeholder-not-a-secret-key"
_AWS_CALLER_CREDENTIALS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")


def aws_placeholder_credentials(key_id: str, variable: str | None) -> dict[str, str]:
    """The variables boto3, the AWS CLI and the other SDKs read, holding placeholders only.

    They replace the caller's own: a real secret key or session token in exec's environment
    must not reach CMD (the proxy supplies the real session token itself): the caller's
    secret key and session tokens are removed before these are set."""
    return {variable or "AWS_ACCESS_KEY_ID": key_id, "AWS_ACCESS_KEY_ID": key_id,
            "AWS_SECRET_ACCESS_KEY": AWS_PLACEHOLDER_SECRET_KEY}


def exit_status(returncode: int) -> int:
    """The shell's convention: a command ended by signal N exits 128+N."""
    return 128 - returncode if returncode < 0 else returncode


def _wait_for_approval(store: GrantStore, grant_id: str, limit: timedelta,
                       signals: _Signals) -> None:
    _say(f"grant {grant_id} waits for approval: run `broker-proxy grant approve {grant_id}` "
         f"(waiting up to {format_duration(limit)})")
    deadline = time.monotonic() + limit.total_seconds()
    while not signals.received:
        grant = store.get(grant_id)
        state = grant.state_at(utc_now()) if grant is not None else "revoked"
        if state == "active":
            _say(f"grant {grant_id} approved by {grant.approved_by if grant else '?'}")
            return
        if state != "pending":
            who = f" by {grant.approved_by}" if grant and grant.approved_by else ""
            raise CliError(f"grant {grant_id} is {state}{who}; the command was not run")
        if time.monotonic() >= deadline:
            raise CliError(f"grant {grant_id} was not approved within "
                           f"{format_duration(limit)}; the command was not run")
        time.sleep(APPROVAL_POLL)


def _revoke(store: GrantStore, audit: AuditLog, grant_id: str) -> None:
    try:
        change_grant(store, audit, grant_id, "revoke", by=local_operator(), now=utc_now(),
                     reason="exec_ended")
    except GrantStateError:
        pass  # already revoked or denied: nothing left to take away
    except (GrantError, AuditError) as error:
        # Loud, because the grant stays usable until its TTL.
        _say(f"could not revoke grant {grant_id}: {error}; revoke it with "
             f"`broker-proxy grant revoke {grant_id}`")


def _say(message: str) -> None:
    print(f"broker-proxy: {message}", file=sys.stderr, flush=True)
