"""The audit events: one name per kind of decision, and what each one means.

Writers use these names (`audit.append(EVENT, ...)`); `audit tail` and docs/audit.md list them.
Policy reloads (policy_reload.py) write `policy_reloaded` / `policy_reload_rejected`; the
start-up load writes `policy_loaded`.
"""

from __future__ import annotations

from typing import Final

EVENTS: Final[dict[str, str]] = {
    "request": "a request was decided: allowed or blocked, with its stable reason code",
    "response": "what came back for an allowed request: status, duration, redactions",
    "request_not_sent": "an allowed request never reached its upstream (refused, timed out, "
                        "not allowed, TLS failed, or its agent went away first); its use was "
                        "given back (use_returned) and upstream_error says why",
    "request_abandoned": "a held request ended without a decision: its agent disconnected, or "
                         "the proxy stopped (the agent got 503 approval_interrupted); a later "
                         "approval finds it ended and spends nothing",
    "request_approved": "a person allowed a held request (once, N uses or M minutes)",
    "request_denied": "a person denied a held request",
    "request_timed_out": "nobody decided a held request before the policy's approval_timeout",
    "client_cert": "a client certificate (secret) was presented to its destination",
    "grant_issued": "a grant was issued (by the CLI, exec or the admin API)",
    "grant_approved": "a pending grant was approved by a person",
    "grant_denied": "a pending grant was denied by a person",
    "grant_revoked": "a grant was revoked (by a person, exec, or a policy reload)",
    "grant_expired": "a grant reached its expiry while the proxy ran (periodic sweep)",
    "grants_purged": "ended grants older than --grant-retention were deleted from the store "
                     "(their ids; their history stays in this log)",
    "console_signed_in": "someone signed in to the web console (reason: admin_token, the name "
                         "is theirs to say, or token:break-glass once a provider is set up; "
                         "login_link, made by `broker-proxy console --as`; oidc, through the "
                         "identity provider, by: oidc:<email or sub>)",
    "decision_refused": "a person was refused a decision (reason): separation_of_duties, the "
                        "approver issued the grant themselves; chat_team_unknown, a Slack "
                        "click from another workspace; chat_user_unknown, a Slack "
                        "user or webhook user the policy's chat section does not map; "
                        "role_required, a chat user whose role may not decide; by names "
                        "them (slack:<id>, webhook:<name>[:<user>]), hold the held request "
                        "and source the address a chat refusal came from",
    "policy_loaded": "the proxy started with this policy (digest)",
    "policy_reloaded": "a changed policy was loaded live (digest)",
    "policy_reload_rejected": "a changed policy was refused; the last good one stays",
    "proxy_started": "the proxy listens",
    "proxy_stopped": "the proxy stopped cleanly (missing after a crash)",
    "audit_torn_tail": "the previous line was torn by a crash; it is kept as evidence",
    "audit_rotated": "first record of a new file; prev is the last hash of the archived file",
    "audit_gap": "`audit recover` found the log cut or replaced against what its writer had "
                 "written: names the lost seqs and the hashes expected against found",
    "hook_failed": "a broker hook raised (a bug or a failing dependency): the flow was denied, "
                   "its answer withheld, or it was cut (hook_outcome), never forwarded "
                   "unchecked; hook names the addon's hook, hook_error the error's type",
    "signin_failed": "failed admin API, console or chat (Slack, signed webhook) sign-ins "
                     "from one source address: a wrong token or a chat signature that does "
                     "not verify (counted and written at most once per window per source)",
}

# Fields beyond the standard ones that `audit tail` shows for an event when present.
EXTRA_FIELDS: Final[tuple[str, ...]] = (
    "by", "fingerprints", "redactions", "expires_at", "uses", "policy", "errors",
    "revoked_grants", "previous_file", "torn_bytes", "message", "max_uses", "grant_status",
    "withheld", "hold", "digest", "minutes", "count", "ended_before", "gap_from_seq",
    "expected_records", "found_records", "failed_signins", "source", "upstream_error",
    "outcome", "use_returned", "hook", "hook_error", "hook_outcome",
)
