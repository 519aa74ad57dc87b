"""The admin listener's door for chat tools: `/v1/chat/...`, signed instead of token-bearing.

Slack and a chat bridge cannot hold the admin token; each signs its request instead, and the
signature (with the user it names, mapped by the policy) is the caller's whole credential. The
door is open only while the policy has a `chat:` section: without one, `/v1/chat/...` is an
ordinary admin route (401 without the token, then 404), as before chat approvals existed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from broker_proxy.approvals.chat_decision import ChatUserRefused, ReadSecret, RefuseOwnGrant
from broker_proxy.approvals.chat_slack import slack_interaction
from broker_proxy.approvals.chat_webhook import webhook_decision
from broker_proxy.approvals.desk import ApprovalDesk
from broker_proxy.audit.errors import AuditError
from broker_proxy.http_routes import ApiError, Headers, require_method, split_path
from broker_proxy.policy.chat_rules import ChatRules
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.signin_guard import AuditSink, SigninGuard

PREFIX = "/v1/chat/"
SLACK_PATH = "/v1/chat/slack/interactions"

log = logging.getLogger("broker_proxy.approvals")


@dataclass(slots=True)
class ChatDoor:
    desk: ApprovalDesk
    rules: Callable[[], ChatRules | None]  # the policy's, read per request (reloads apply)
    read_secret: ReadSecret
    audit: AuditSink | None = None  # where refused chat users are recorded
    # Separation of duties: nobody allows a request on a grant they issued (through any door).
    refuse_own: RefuseOwnGrant | None = None

    def serves(self, path: str) -> bool:
        return path.startswith(PREFIX) and self.rules() is not None

    def answer(self, method: str, path: str, headers: Headers, body: Callable[[], bytes],
               source: str, guard: SigninGuard | None = None) -> tuple[int, object]:
        """Answer a chat tool's signed request. A signature that fails is a failed sign-in:
        slowed per source address and audited like a wrong admin token."""
        answers: list[tuple[int, object]] = []
        refusals: list[ApiError] = []

        def verify() -> bool:
            try:
                answers.append(self._route(method, path, headers, body))
            except ApiError as error:
                if error.status != 401:
                    raise
                refusals.append(error)
                return False
            return True

        try:
            if guard is None:
                verify()
            else:
                guard.check(source, "chat_signature", verify)
        except ChatUserRefused as refused:
            self._record_refusal(refused, source)
            raise
        if refusals:
            raise refusals[-1]
        return answers[-1]

    def _record_refusal(self, refused: ChatUserRefused, source: str) -> None:
        """A signed request from a user who may not decide is evidence: who, why, which
        held request. The 403 stands even when the audit log cannot take the record."""
        if self.audit is None:
            return
        try:
            # A separation refusal names the grant too, as the console's does: the grant's
            # history (`audit report --grant`) then shows who was held back.
            if refused.grant is None:
                self.audit.append("decision_refused", decision="deny", reason=refused.code,
                                  by=refused.identity, hold=refused.hold_id, source=source)
            else:
                self.audit.append("decision_refused", decision="deny", reason=refused.code,
                                  by=refused.identity, hold=refused.hold_id, source=source,
                                  grant=refused.grant)
        except AuditError as error:
            log.error("a refused chat decision by %s was not recorded: %s",
                      refused.identity, error)

    def _route(self, method: str, path: str, headers: Headers,
               body: Callable[[], bytes]) -> tuple[int, object]:
        """Route a signed chat request; a secret the vault cannot give is a 503."""
        rules = self.rules()
        parts = split_path(path)
        try:
            if parts == split_path(SLACK_PATH) and rules is not None and rules.slack:
                require_method(method, "POST")
                return slack_interaction(rules.slack, self.read_secret, self.desk, headers,
                                         body(), self.refuse_own)
            if len(parts) == 4 and parts[:3] == ["v1", "chat", "webhooks"] \
                    and rules is not None and parts[3] in rules.webhooks:
                require_method(method, "POST")
                return webhook_decision(rules.webhooks[parts[3]], self.read_secret, self.desk,
                                        headers, body(), self.refuse_own)
        except SecretUnavailable:  # fail closed: nothing is decided without the signature
            raise ApiError(503, "secret_unavailable",
                           "a chat secret named in the policy cannot be read from the vault"
                           ) from None
        raise ApiError(404, "not_found", "no such route")
