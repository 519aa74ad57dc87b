"""Where the decision is made: one request in, ``Allowed`` or ``Denied`` out.

Read ``Broker.decide`` top to bottom: authenticate the grant, check it is usable now, check the
request is well formed and names one host, find the placeholders, match each one against the
grant and the policy, resolve the secrets, reserve a use, write the audit record, and only then
hand back the rewritten request. Anything unexpected on the way denies (fail closed): a hook that
raised would otherwise let mitmproxy forward the request untouched.

Each step is one line of ``_decide``; the longer ones are methods below it, or in the mixins
for a person's approval (approval_hold.py), the limits (limit_checks.py) and what is recorded
once the request has gone (outcomes.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from broker_proxy.approvals.desk import ApprovalDesk
from broker_proxy.approvals.verdict import Held
from broker_proxy.audit.log import AuditError, AuditLog
from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.decision.approval_hold import ApprovalHolds
from broker_proxy.decision.authority import authorities_agree
from broker_proxy.decision.budget_keeper import BudgetKeeper
from broker_proxy.decision.header_templates import (
    applicable_templates,
    apply_templates,
    template_conflict,
)
from broker_proxy.decision.limit_checks import DecisionMustWait, LimitChecks
from broker_proxy.decision.outcomes import OutcomeRecords
from broker_proxy.decision.protocol_checks import read_protocol
from broker_proxy.decision.request_checks import (
    header_controls_problem,
    header_size_problem,
    method_override_problem,
    upgrade_problem,
)
from broker_proxy.decision.request_record import request_fields
from broker_proxy.decision.request_scan import PlacedHit, RequestRewriter, find_placeholders
from broker_proxy.decision.secret_use import SecretUse
from broker_proxy.grants.model import Grant
from broker_proxy.grants.store import GrantStore, GrantStoreBusy, GrantStoreError, ReserveResult
from broker_proxy.metrics import BrokerMetrics
from broker_proxy.policy.destinations import canonical_host
from broker_proxy.request import codes
from broker_proxy.request.outbound import Allowed, Denied, OutboundRequest, Verdict
from broker_proxy.request.paths import AmbiguousPath, canonical_path
from broker_proxy.request.scrub_scope import ScrubScope
from broker_proxy.scrubbing.content_decoding import (
    BodyNotDecodable,
    BodyTooLarge,
    DecodeLimits,
    decode_whole,
    parse_content_encoding,
)
from broker_proxy.scrubbing.grant_scrub import GrantScrub, GrantScrubValues, scope_of
from broker_proxy.scrubbing.scrubber import Scrubber
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.source import SecretSource
from broker_proxy.secrets.value import SecretValue
from broker_proxy.signing import aws_resign
from broker_proxy.time_source import utc_now

log = logging.getLogger("broker_proxy")

MAX_PLACEHOLDERS_PER_REQUEST = 16
# An encoded request body is decoded to be scanned for placeholders, never past these bounds.
REQUEST_DECODE_LIMITS = DecodeLimits(max_output=16 * 1024 * 1024)

# Grant states that are not "active", with the answer each one gets.
_GRANT_REFUSALS: dict[str, tuple[str, str]] = {
    "expired": (codes.GRANT_EXPIRED, "the grant has expired"),
    "revoked": (codes.GRANT_REVOKED, "the grant was revoked"),
    "used_up": (codes.GRANT_USED_UP, "the grant has no uses left"),
    "pending": (codes.GRANT_PENDING, "the grant is waiting for approval"),
    "denied": (codes.GRANT_DENIED, "the grant was denied"),
}
_RESERVE_REFUSALS: dict[ReserveResult, str] = {
    ReserveResult.EXPIRED: "expired",
    ReserveResult.USED_UP: "used_up",
    ReserveResult.REVOKED: "revoked",
    ReserveResult.PENDING: "pending",
    ReserveResult.DENIED: "denied",
    ReserveResult.NOT_FOUND: "revoked",
}


@dataclass(slots=True)
class Broker(LimitChecks, ApprovalHolds, OutcomeRecords):
    policy: ActivePolicy
    grants: GrantStore
    secrets: SecretSource
    audit: AuditLog
    metrics: BrokerMetrics
    clock: Callable[[], datetime] = utc_now
    # Every secret of a grant, for scrubbing all its answers (see grant_scrub.py).
    scrub_values: GrantScrubValues = field(init=False, repr=False)
    # Requests held for a person's approval (approvals/desk.py).
    approvals: ApprovalDesk = field(init=False, repr=False)
    # LLM token and cost budgets (budget_keeper.py).
    budgets: BudgetKeeper = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.scrub_values = GrantScrubValues(self.secrets)
        # Held requests live in the grant store, shared by every process and replica using it;
        # a store without a hold table (a test's fake) keeps them in this process.
        hold_table = getattr(self.grants, "hold_table", None)
        self.approvals = ApprovalDesk(self.audit, self.clock,
                                      table=hold_table() if hold_table is not None else None)
        self.budgets = BudgetKeeper(self.grants, self.metrics)

    def decide(self, token: str | None, request: OutboundRequest, *,
               defer_durability: bool = False, wait: bool = True,
               approved_hold: str | None = None, deadline: float | None = None) -> Verdict:
        """Decide on one request.

        With `defer_durability`, an allowed secret-carrying request comes back with
        `audit_seq` set and its record written but not yet fsynced: the caller must get
        `make_durable(verdict)` to succeed before the request leaves (the proxy does that off
        the event loop, so concurrent requests share one fsync).

        Without `wait` (a caller on the event loop), a decision that would have to wait for the
        grant store's write lock raises DecisionMustWait before anything was written or
        spent: decide again where waiting is allowed. With a `deadline` (time.monotonic(), set
        when the request arrived), a wait for the store's write lock ends by then with a 503.

        A request that needs a person's approval comes back as `Held` (a 403 to any caller
        that cannot wait); once the person allowed it, decide again with its `approved_hold`.
        """
        started = time.perf_counter()
        try:
            verdict = self._decide(token, request, defer_durability, wait, approved_hold,
                                   deadline)
        except DecisionMustWait:
            raise
        except Exception as error:  # fail closed: an exception must never forward
            log.error("decision failed: %s", type(error).__name__)
            verdict = Denied(503, codes.INTERNAL_ERROR,
                             "the broker could not decide; nothing was sent")
            try:
                self._deny(request, None, verdict.status, verdict.error, verdict.message)
            except Exception:  # the answer stands even if the record cannot be written
                self.metrics.audit_write_errors.inc()
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        decision = _decision_of(verdict)
        reason = verdict.reason if isinstance(verdict, Allowed) else verdict.error
        self.metrics.requests.labels(decision, reason).inc()
        return verdict

    def admit_tunnel(self, token: str | None, request: OutboundRequest) -> Denied | None:
        """CONNECT: only the credentials are checked here.

        Everything else waits for the requests inside the tunnel, where the agent can read a
        JSON answer (clients hide the body of a refused CONNECT) and where each request is
        checked again anyway.
        """
        try:
            grant = self.grants.authenticate(token) if token else None
        except GrantStoreError:
            self.metrics.requests.labels("deny", codes.GRANT_STORE_UNAVAILABLE).inc()
            return self._deny(request, None, 503, codes.GRANT_STORE_UNAVAILABLE,
                              "the grant store cannot be used; nothing was sent")
        except Exception as error:  # fail closed
            log.error("tunnel admission failed: %s", type(error).__name__)
            return Denied(503, codes.INTERNAL_ERROR, "the broker could not decide")
        if grant is None:
            denied = self._auth_required(request, token)
            self.metrics.requests.labels(_decision_of(denied), denied.error).inc()
            return denied
        return None

    def _decide(self, token: str | None, request: OutboundRequest,
                defer_durability: bool = False, wait: bool = True,
                approved_hold: str | None = None, deadline: float | None = None) -> Verdict:
        policy = self.policy  # one snapshot for the whole decision, even across a reload
        now = self.clock()
        grant = self._usable_grant(token, request, policy, now)
        if isinstance(grant, Denied):
            return grant
        checked = self._checked_request(request, grant)
        if isinstance(checked, Denied):
            return checked
        request = checked
        # AWS SigV4: signed by the agent's SDK with a placeholder key, signed again here.
        if resigned := self._aws_resigning(request, grant, policy, now, defer_durability,
                                           wait, deadline):
            return self._scrubbing_the_grant(resigned, grant, policy, request.host)
        # Per-grant placeholders (placeholder_format) name a secret only in their own grant.
        scanner = policy.scanner.for_grant(dict(grant.placeholders))
        hits = find_placeholders(scanner, request)
        # Header templates: set by the proxy for the grant's secrets' destinations.
        templates = applicable_templates(policy, grant, request)
        if not hits and not templates:
            return self._scrubbing_the_grant(
                self._allow_without_secret(request, grant, policy), grant, policy, request.host)
        use = SecretUse(request, grant, policy, scanner, hits, templates)
        # Where each secret would go, then what the request is for (LLM model rules, MCP and
        # GraphQL calls): all judged before any secret is touched.
        if refusal := self._placement_refusal(use) or self._purpose_refusal(use):
            return refusal
        # A person's yes comes before anything is resolved, spent or recorded with a secret.
        if held := self._held_for_approval(use, approved_hold):
            return held
        values = self._resolved(use)
        if isinstance(values, Denied):
            return values
        if refusal := self._limit_refusal(use, now, wait, deadline):  # rates, then budgets
            return refusal
        revealed = {n: v.reveal() for n, v in values.items()}
        try:
            audit_record = self._spend_use(use.request, grant, now, codes.INJECTED, revealed,
                                           defer_durability, wait, deadline,
                                           fields=use.audit_fields())
        except BaseException:
            self.budgets.release(grant.id, use.tickets)
            raise
        if isinstance(audit_record, Denied):
            self.budgets.release(grant.id, use.tickets)
            return audit_record
        allowed = self._injected(use, values, audit_record["seq"] if defer_durability else None)
        return self._scrubbing_the_grant(allowed, grant, policy, use.request.host)

    def _usable_grant(self, token: str | None, request: OutboundRequest, policy: ActivePolicy,
                      now: datetime) -> Grant | Denied:
        """The grant the token names, if it may be used now (invariant 3: on every request)."""
        try:
            grant = self.grants.authenticate(token) if token else None
        except GrantStoreError:
            return self._deny(request, None, 503, codes.GRANT_STORE_UNAVAILABLE,
                              "the grant store cannot be used; nothing was sent")
        if grant is None:
            return self._auth_required(request, token)
        return self._grant_refusal(grant, policy, now, request) or grant

    def _checked_request(self, request: OutboundRequest,
                         grant: Grant) -> OutboundRequest | Denied:
        """The request well formed and naming one host, its body decoded, its host canonical."""
        # Caps first: they bound the cost of every later pass over the headers.
        if problem := header_size_problem(request.headers):
            return self._deny(request, grant, 431, codes.HEADERS_TOO_LARGE, problem)
        if problem := header_controls_problem(request.headers):
            return self._deny(request, grant, 400, codes.MALFORMED_REQUEST, problem)
        if not authorities_agree(scheme=request.scheme, host=request.host, port=request.port,
                                 host_header=request.host_header, authority=request.authority,
                                 sni=request.sni):
            return self._deny(request, grant, 403, codes.AUTHORITY_MISMATCH,
                              "the Host header, request line and TLS name must all name the "
                              "host the connection goes to")
        if problem := upgrade_problem(request.headers):
            return self._deny(request, grant, 403, codes.UPGRADE_NOT_ALLOWED, problem)
        if request.body_encoding is not None:
            # Only now, for an authenticated grant, and within bounds.
            decoded = self._decoded_body(request, grant)
            if isinstance(decoded, Denied):
                return decoded
            request = decoded
        # Match on one spelling of the host: the one the policy was compiled with.
        if (host := canonical_host(request.host)) != request.host:
            request = replace(request, host=host)
        return request

    def _placement_refusal(self, use: SecretUse) -> Denied | None:
        """Each placeholder where its secret may go, on the one path that is sent."""
        request, grant = use.request, use.grant
        if len(use.hits) > MAX_PLACEHOLDERS_PER_REQUEST:
            return self._deny(request, grant, 403, codes.TOO_MANY_PLACEHOLDERS,
                              f"at most {MAX_PLACEHOLDERS_PER_REQUEST} placeholders per request")
        try:
            # Match on the canonical path and send exactly that path: an upstream that resolves
            # dot segments, decodes %2F or drops ";" parameters would otherwise serve another
            # path than the one we allowed.
            if (path := canonical_path(request.path)) != request.path:
                request = use.request = replace(request, path=path)
        except AmbiguousPath as error:
            return self._deny(request, grant, 403, codes.AMBIGUOUS_PATH,
                              f"this path cannot carry a secret: {error}")
        if problem := method_override_problem(request):
            # A POST allowed by the policy must not become a DELETE inside the upstream.
            return self._deny(request, grant, 403, codes.METHOD_OVERRIDE_REFUSED, problem)
        if refusal := self._hit_refusal(use.hits, grant, use.policy, request):
            return refusal
        if problem := template_conflict(use.templates, request.headers):
            return self._deny(request, grant, 403, codes.HEADER_ALREADY_SET, problem)
        return None

    def _purpose_refusal(self, use: SecretUse) -> Denied | None:
        """LLM model and hosted tool rules, then MCP and GraphQL rules: what the request asks
        the upstream to do. Hosted tools' terms may be written into the body here."""
        policy = use.policy
        if policy.model_limited and (ruled := self._llm_rule_refusal(
                use.request, use.grant, policy, use.names)):
            if isinstance(ruled, Denied):
                return ruled
            use.request, use.body_changed = ruled, True
        if not policy.protocol_limited:
            return None
        protocol = use.protocol = read_protocol(use.request, policy, use.names)
        if protocol is None:
            return None
        outcome = "passed" if protocol.refusal is None else "refused"
        for kind, action in protocol.metric_actions():
            self.metrics.protocol_checks.labels(kind, action, outcome).inc()
        if (refused := protocol.refusal) is not None:
            return self._deny(use.request, use.grant, refused.status, refused.code,
                              refused.message, fields=protocol.audit_fields())
        return None

    def _resolved(self, use: SecretUse) -> dict[str, SecretValue] | Denied:
        """The value of each secret the request carries, or why one cannot be used."""
        values: dict[str, SecretValue] = {}
        for name in use.names:
            try:
                values[name] = self.secrets.resolve(use.policy.policy.secrets[name])
            except SecretUnavailable as error:
                # The operator reads the proxy's log, not the agent's 503: a wrong master key
                # or a broken backend must show up there. The reasons are fixed texts, no values.
                log.warning("%s", error)
                return self._deny(use.request, use.grant, 503, codes.SECRET_UNAVAILABLE,
                                  str(error))
            if values[name].has_control_chars() and (any(
                    h.place == "header" and h.secret == name for h in use.hits)
                    or any(template.secret == name for template in use.templates)):
                return self._deny(use.request, use.grant, 503, codes.SECRET_VALUE_UNSAFE,
                                  f'secret "{name}" holds control characters and cannot go in '
                                  "a header")
        return values

    def _limit_refusal(self, use: SecretUse, now: datetime, wait: bool,
                       deadline: float | None) -> Denied | None:
        """The grant's rates, then the LLM budgets: their reservations are held in ``use``."""
        policy, request, grant = use.policy, use.request, use.grant
        if policy.rated_secrets and (limited := self._rate_refusal(
                request, grant, policy, use.names, now, wait, deadline)):
            return limited
        if policy.budgeted_secrets & set(use.names):
            reserved = self._budget_reservations(request, grant, policy, use.names, wait,
                                                 deadline)
            if isinstance(reserved, Denied):
                return reserved
            use.tickets, use.request = reserved.tickets, reserved.request
            use.body_changed = use.body_changed or reserved.body_changed
        return None

    def _injected(self, use: SecretUse, values: dict[str, SecretValue],
                  audit_seq: int | None) -> Allowed:
        """The request with its secrets swapped in, as it leaves."""
        request, secrets = use.request, use.policy.policy.secrets
        revealed = {n: v.reveal() for n, v in values.items()}
        usernames = {n: secrets[n].basic_username for n in use.names}
        rewriter = RequestRewriter(use.scanner, revealed, basic_usernames={
            n: user for n, user in usernames.items() if user is not None})
        headers = rewriter.headers(request.headers)
        if use.templates:
            headers = apply_templates(headers or request.headers, use.templates, revealed,
                                      usernames)
        for name in use.names:
            self.metrics.injections.labels(name).inc()
        return Allowed(
            grant_id=use.grant.id,
            injected=tuple(use.names),
            headers=headers,
            query=rewriter.query(request.query),
            body=self._body_to_send(rewriter, request.body, use.body_changed),
            path=request.path if request.path != use.sent_path else None,
            reason=codes.INJECTED,
            audit_seq=audit_seq,
            scrub={n: (revealed[n], use.grant.placeholder_of(n) or secrets[n].placeholder)
                   for n in use.names},
            budget=use.tickets,
            mcp_lists=use.protocol.list_rules if use.protocol else None,
        )

    def _scrubbing_the_grant(self, verdict: Verdict, grant: Grant, policy: ActivePolicy,
                             host: str) -> Verdict:
        """Invariant 6 (docs/ARCHITECTURE.md): the answer is scrubbed for every secret the grant
        holds and every secret the policy lets any grant send to this host, current and retired
        values.

        The values this request injected (just resolved, or a fresh OAuth2 token) win over the
        cached ones under the same name; one that differs from the cache means a rotation the
        cache missed: the set is composed again, so the replaced value is kept as retired.
        """
        if not isinstance(verdict, Allowed):
            return verdict
        scope = scope_of(grant, host)
        held = self.scrub_values.for_scope(scope, policy.policy, policy.index)
        stale = [name for name, (value, _) in verdict.scrub.items()
                 if name in held.values and held.values[name][0] != value]
        if stale:
            for name in stale:
                self.scrub_values.forget(name)  # rotated: resolve it anew
            held = self.scrub_values.for_scope(scope, policy.policy, policy.index)
        scrub = {**held.values, **verdict.scrub} if verdict.scrub else held.values
        if self.may_block():
            # Decided on a worker thread: compile a new value's patterns (20-35 ms) here, so the
            # event loop only looks them up when the answer comes (see scrubber._Compiled).
            Scrubber(scrub)
        return replace(verdict, scrub=scrub, scrub_complete=held.complete, scrub_scope=scope,
                       scrub_generation=held.generation, withhold=policy.index.withhold_at(host))

    def live_scrub(self, scope: ScrubScope, generation: int) -> GrantScrub | None:
        """An answer's scrub set again if a value changed since ``generation`` (a long poll
        answered, or a stream's next chunk or message, after a rotation); else None.

        Never fetches from a backend (this runs on the event loop): what changed reached the
        cache through the vault watcher or a request that injected the new value.
        """
        if self.scrub_values.generation == generation:
            return None
        policy = self.policy
        return self.scrub_values.for_scope(scope, policy.policy, policy.index, resolve=False)

    def _decoded_body(self, request: OutboundRequest, grant: Grant) -> OutboundRequest | Denied:
        try:
            codings = parse_content_encoding(request.body_encoding)
        except BodyNotDecodable:
            # A coding no HTTP library decodes either (aws-chunked, compress): its bytes are
            # scanned as sent, as mitmproxy itself would have given them.
            return replace(request, body_encoding=None)
        try:
            body = decode_whole(request.body, codings, REQUEST_DECODE_LIMITS)
        except BodyTooLarge as error:  # 413 body_too_large
            return self._deny(request, grant, error.status, error.code,
                              "the decoded request body is too large to be checked")
        except BodyNotDecodable as error:  # 415 body_not_decodable
            return self._deny(request, grant, error.status, error.code,
                              f"the request body cannot be decoded to be checked: {error}")
        return replace(request, body=body, body_encoding=None)

    def may_block(self) -> bool:
        """Whether a decision can wait on the network or another process.

        True with a remote grant store (Redis) or a policy with slow secret sources. The proxy
        then decides on worker threads so one slow call cannot stall every connection; otherwise
        it decides on its event loop, which costs less CPU per request.
        """
        return self.grants.remote or self.policy.slow_secrets

    def make_durable(self, allowed: Allowed) -> Denied | None:
        """Invariant 5 (docs/ARCHITECTURE.md) for deferred records: on disk before the secret
        leaves, or refused."""
        if allowed.audit_seq is None:
            return None
        try:
            self.audit.ensure_durable(allowed.audit_seq)
        except AuditError:
            self.metrics.audit_write_errors.inc()
            return Denied(503, codes.AUDIT_UNAVAILABLE,
                          "the audit log cannot be written; nothing was sent", allowed.grant_id)
        except Exception as error:  # fail closed
            log.error("audit sync failed: %s", type(error).__name__)
            return Denied(503, codes.AUDIT_UNAVAILABLE,
                          "the audit log cannot be written; nothing was sent", allowed.grant_id)
        return None

    def _grant_refusal(self, grant: Grant, policy: ActivePolicy, now: datetime,
                       request: OutboundRequest) -> Denied | None:
        state = grant.state_at(now)
        if state != "active":
            code, message = _GRANT_REFUSALS[state]
            return self._deny(request, grant, 403, code, message)
        agent = policy.policy.agents.get(grant.agent)
        if agent is None or not set(grant.secrets) <= agent.secrets:
            # The policy changed under the grant: it may not carry more than the policy allows now.
            return self._deny(request, grant, 403, codes.GRANT_OUTSIDE_POLICY,
                              "the policy no longer allows this grant")
        return None

    def _hit_refusal(self, hits: list[PlacedHit], grant: Grant, policy: ActivePolicy,
                     request: OutboundRequest) -> Denied | None:
        for hit in hits:
            secret = policy.policy.secrets.get(hit.secret) if hit.secret else None
            if secret is None or hit.secret not in grant.secrets:
                # Same answer whether the name exists or not: no probing of the policy.
                return self._deny(request, grant, 403, codes.SECRET_NOT_GRANTED,
                                  "a placeholder names a secret this grant does not hold")
            if hit.place not in secret.inject:
                return self._deny(request, grant, 403, codes.PLACEHOLDER_NOT_ALLOWED_HERE,
                                  f'secret "{secret.name}" may not be placed in the {hit.place}')
            if request.scheme != "https" and not policy.index.allows(
                    secret.name, request.scheme, request.host, request.port,
                    request.method, request.path):
                return self._deny(request, grant, 403, codes.PLAINTEXT_HTTP,
                                  f'secret "{secret.name}" is only sent over https')
            if not policy.index.allows(secret.name, request.scheme, request.host, request.port,
                                       request.method, request.path):
                return self._deny(request, grant, 403, codes.DESTINATION_NOT_ALLOWED,
                                  f'secret "{secret.name}" may not be sent to {request.method} '
                                  f"{request.scheme}://{request.host}:{request.port}"
                                  f"{request.path}")
        return None

    def _aws_resigning(self, request: OutboundRequest, grant: Grant, policy: ActivePolicy,
                       now: datetime, defer_durability: bool, wait: bool,
                       deadline: float | None) -> Verdict | None:
        """None unless the request is SigV4-signed with a placeholder key id (aws_resign.py)."""
        plan = aws_resign.plan(request, grant.secrets, policy, now, self.secrets.resolve)
        if plan is None:
            return None
        if isinstance(plan, aws_resign.Refusal):
            return self._deny(request, grant, plan.status, plan.code, plan.message)
        audit_record = self._spend_use(request, grant, now, codes.RESIGNED,
                                       {plan.secret: plan.fingerprint_of}, defer_durability, wait,
                                       deadline)
        if isinstance(audit_record, Denied):
            return audit_record
        self.metrics.injections.labels(plan.secret).inc()
        return Allowed(grant_id=grant.id, injected=(plan.secret,), headers=plan.headers,
                       query=plan.query, reason=codes.RESIGNED, scrub=plan.scrub,
                       audit_seq=audit_record["seq"] if defer_durability else None)

    def _spend_use(self, request: OutboundRequest, grant: Grant, now: datetime, reason: str,
                   values: dict[str, str], defer_durability: bool,
                   wait: bool = True, deadline: float | None = None,
                   fields: dict[str, Any] | None = None) -> dict[str, Any] | Denied:
        """Reserve one of the grant's uses, then write the record of the secrets' use.

        Invariant 5 (docs/ARCHITECTURE.md): the record is written before the secret leaves
        (fsynced here, or by `make_durable` when the caller deferred it). `values` maps each
        secret name to the value its fingerprint is taken of.
        """
        try:
            reserved = self.grants.reserve_use(grant.id, now, wait=wait, deadline=deadline)
        except GrantStoreBusy:
            raise DecisionMustWait from None  # nothing written or spent yet
        except GrantStoreError:
            return self._deny(request, grant, 503, codes.GRANT_STORE_UNAVAILABLE,
                              "the grant store cannot be used; nothing was sent")
        if reserved is not ReserveResult.RESERVED:
            code, message = _GRANT_REFUSALS[_RESERVE_REFUSALS[reserved]]
            return self._deny(request, grant, 403, code, message)
        names = sorted(values)
        try:
            # Fingerprints (HMAC under the audit key, never a plain hash) tell secret versions
            # apart after a rotation without the record holding anything a reader could invert.
            return self.audit.append("request", durable=not defer_durability, **request_fields(
                request, grant, "allow", reason, None, names), fingerprints=[
                    f"{n}:{self.audit.fingerprint(values[n])}" for n in names],
                **(fields or {}))
        except AuditError:
            self.metrics.audit_write_errors.inc()
            return Denied(503, codes.AUDIT_UNAVAILABLE,
                          "the audit log cannot be written; nothing was sent", grant.id)

    def _allow_without_secret(self, request: OutboundRequest, grant: Grant,
                              policy: ActivePolicy) -> Verdict:
        covering = policy.index.secrets_covering(request.scheme, request.host, request.port)
        if not (covering & set(grant.secrets)) and not policy.index.egress_allows(request.host):
            return self._deny(request, grant, 403, codes.DESTINATION_NOT_GRANTED,
                              f"this grant does not cover {request.host}:{request.port}")
        try:
            self.audit.append("request", **request_fields(request, grant, "allow",
                                                          codes.ALLOWED, None, []))
        except AuditError:
            self.metrics.audit_write_errors.inc()
            return Denied(503, codes.AUDIT_UNAVAILABLE,
                          "the audit log cannot be written; nothing was sent", grant.id)
        return Allowed(grant_id=grant.id)

    def _auth_required(self, request: OutboundRequest, token: str | None) -> Denied:
        """407. Without any credentials (token None) it is the challenge a client such as git
        or curl --proxy-anyauth waits for before it sends its token: recorded as decision
        `challenge`, so it does not count as a refused request. Credentials that are there but
        name no grant (a guess, a revoked token's typo) stay a `deny`."""
        return self._deny(request, None, 407, codes.PROXY_AUTH_REQUIRED,
                          "put a valid grant token in the proxy URL's password",
                          challenge=token is None)

    def _deny(self, request: OutboundRequest, grant: Grant | None, status: int, code: str,
              message: str, *, challenge: bool = False,
              fields: dict[str, Any] | None = None) -> Denied:
        decision = "challenge" if challenge else "deny"
        try:
            self.audit.append("request", **request_fields(request, grant, decision, code,
                                                          status, []), **(fields or {}))
        except AuditError:
            self.metrics.audit_write_errors.inc()  # still denied: nothing to protect upstream
        return Denied(status, code, message, grant.id if grant else None, challenge=challenge)


def _decision_of(verdict: Verdict) -> str:
    """The `decision` label of the request metrics, as the audit record says it."""
    if isinstance(verdict, Allowed):
        return "allow"
    if isinstance(verdict, Held):
        return "held"
    return "challenge" if verdict.challenge else "deny"
