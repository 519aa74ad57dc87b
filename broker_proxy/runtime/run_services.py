"""What `broker-proxy run` starts next to the proxy: the admin API, the policy and vault
watchers.

Kept out of the CLI module so `run` needs only a few lines to start, announce and stop them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from broker_proxy.admin_api import AdminContext, AdminServer
from broker_proxy.admin_token import AdminApiError, load_or_create_admin_token
from broker_proxy.approvals.chat_decision import vault_entry
from broker_proxy.approvals.chat_door import ChatDoor
from broker_proxy.approvals.chat_slack import SlackNotifier
from broker_proxy.approvals.webhook import Notifiers, WebhookNotifier
from broker_proxy.audit.checkpoint import CheckpointPaths
from broker_proxy.console.oidc_routes import OidcDoor
from broker_proxy.console.routes import Console
from broker_proxy.console.separation import refuse_own_grant
from broker_proxy.console.sessions import DEFAULT_SESSION_TTL, ConsoleSessions
from broker_proxy.decision.broker import Broker
from broker_proxy.home import Home
from broker_proxy.identity.roles import Principal
from broker_proxy.policy.chat_rules import SlackRules
from broker_proxy.readiness import CachedProbe, store_write_problem
from broker_proxy.runtime.policy_reload import PolicyReloader
from broker_proxy.runtime.vault_watch import VaultWatch
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.credentials import CredentialResolver
from broker_proxy.sign_in.oidc import OidcRefused
from broker_proxy.signin_guard import SigninGuard


class AdminListenError(AdminApiError):
    """The admin API's address cannot be bound."""


@dataclass(slots=True)
class RunServices:
    admin: AdminServer | None
    reloader: PolicyReloader
    policy_file: Path
    vault_watch: VaultWatch | None = None

    def proxy_ready(self, listen: str) -> None:
        """Grants issued over the admin API carry the proxy URL from now on."""
        if self.admin is not None:
            self.admin.context.proxy_listen = listen

    def runtime_info(self) -> dict[str, str | None]:
        """Extra run.json fields: `exec` finds the admin API and the policy the proxy uses."""
        return {"admin": self.admin.address if self.admin else None,
                "policy": str(self.policy_file.absolute())}

    def stop(self) -> None:
        if self.vault_watch is not None:
            self.vault_watch.stop()
        self.reloader.stop()
        if self.admin is not None:
            self.admin.stop()
            if self.admin.context.signin_guard is not None:
                self.admin.context.signin_guard.close()  # counts not yet written go in now


def start_services(broker: Broker, home: Home, policy_file: Path,
                   admin: tuple[str, int] | None,
                   console_session_ttl: timedelta = DEFAULT_SESSION_TTL,
                   checkpoint_problem: Callable[[], str | None] | None = None) -> RunServices:
    """Raises AdminApiError (token file, address) before anything is left running."""
    server = None
    reloader = PolicyReloader(broker, policy_file)
    if admin is not None:
        token = load_or_create_admin_token(home.admin_token)
        console = Console.for_home(home.audit_log, home.audit_key,
                                   CheckpointPaths.in_home(home.root).file,
                                   ConsoleSessions(console_session_ttl))
        console.policy_loaded_at = lambda: broker.policy.loaded_at
        console.record_sign_in = lambda by, how: broker.audit.append(
            "console_signed_in", decision="allow", reason=how, by=by)
        console.sign_in = lambda: broker.policy.policy.sign_in
        context = AdminContext(token=token, policy=lambda: broker.policy, grants=broker.grants,
                               audit=broker.audit,
                               policy_file_problem=lambda: reloader.file_problem,
                               approvals=broker.approvals, console=console,
                               store_write_problem=CachedProbe(
                                   lambda: store_write_problem(broker.grants)),
                               vault_problem=_vault_probe(broker),
                               checkpoint_problem=checkpoint_problem,
                               signin_guard=SigninGuard(
                                   broker.audit,
                                   lambda surface: broker.metrics.admin_signin_failures
                                   .labels(surface).inc()).start())
        # Index the audit log now, not on the first page a person opens (~4 s per million).
        threading.Thread(target=console.audit.page, args=({}, None, 1),
                         name="audit-index", daemon=True).start()
        addresses: list[str] = []
        context.oidc = OidcDoor(sign_in=console.sign_in,
                                client_secret=lambda name: _vault_value(broker, name),
                                base_url=lambda: f"http://{addresses[0]}")
        try:
            server = AdminServer(admin[0], admin[1], context)
            addresses.append(server.address)
        except OSError as error:
            raise AdminListenError(f"cannot listen for the admin API on {admin[0]}:{admin[1]}: "
                                   f"{error.strerror or error}") from None
        server.start()
        start_approvals(broker, server)
    elif broker.approvals.shared:
        # A worker of a group: it holds requests (they live in the grant store) and the first
        # process's admin API decides them; its webhook links to that console.
        broker.approvals.notifier = _notifiers(broker, lambda: _group_console(home))
    reloader.start()
    # Every process of the home (workers too): `secret set` waits for each one's ack.
    watch = VaultWatch(broker, home).start()
    return RunServices(server, reloader, policy_file, watch)


def _group_console(home: Home) -> str | None:
    """The admin API of the process that wrote the home's run.json (the group's first)."""
    try:
        admin = json.loads(home.runtime.read_text()).get("admin")
    except (OSError, ValueError, AttributeError):
        return None
    return f"http://{admin}" if isinstance(admin, str) and admin else None


def _vault_value(broker: Broker, name: str) -> str:
    """The OIDC client secret: a vault entry by name (never in the policy file)."""
    try:
        return vault_entry(broker.secrets)(name)
    except SecretUnavailable as error:
        raise OidcRefused("oidc_client_secret_unavailable", str(error)) from None


def _vault_probe(broker: Broker) -> Callable[[], str | None] | None:
    secrets = broker.secrets
    if isinstance(secrets, CredentialResolver):
        return CachedProbe(secrets.backends.vault_problem)
    return None


def start_approvals(broker: Broker, server: AdminServer) -> None:
    """Requests can be held for a person now that the admin API serves to decide them."""
    broker.approvals.notifier = _notifiers(broker, lambda: f"http://{server.address}")
    # Slack and signed webhooks decide on the same listener, with their own signatures.
    console = server.context.console

    def refuse_own(principal: Principal, grant_id: str) -> None:
        refuse_own_grant(principal, grant_id, grants=broker.grants,
                         audit=console.audit if console is not None else None,
                         sign_in=broker.policy.policy.sign_in, chat=broker.policy.policy.chat)

    server.context.chat = ChatDoor(broker.approvals, lambda: broker.policy.policy.chat,
                                   vault_entry(broker.secrets), broker.audit, refuse_own)
    broker.approvals.accepting = True


def _notifiers(broker: Broker, console_url: Callable[[], str | None]) -> Notifiers:
    """The JSON webhook and Slack (each only when the policy names it); failures of either
    are counted as approval notices that did not go out."""
    failed = broker.metrics.approval_webhook_failures.inc

    def slack() -> SlackRules | None:
        chat = broker.policy.policy.chat
        return chat.slack if chat is not None else None

    return Notifiers(
        WebhookNotifier(url=lambda: broker.policy.policy.approval_webhook,
                        console_url=console_url, on_failure=failed),
        SlackNotifier(slack, vault_entry(broker.secrets), console_url, failed))
