"""Stable error codes and reasons: scripts and dashboards match on these strings.

Every ``Denied`` names one as its ``error``, every ``Allowed`` one as its ``reason``; the audit
record's ``reason`` is the same string.
"""

PROXY_AUTH_REQUIRED = "proxy_auth_required"
GRANT_EXPIRED = "grant_expired"
GRANT_REVOKED = "grant_revoked"
GRANT_USED_UP = "grant_used_up"
GRANT_PENDING = "grant_pending_approval"
GRANT_DENIED = "grant_denied"
GRANT_OUTSIDE_POLICY = "grant_outside_policy"
MALFORMED_REQUEST = "malformed_request"
AUTHORITY_MISMATCH = "authority_mismatch"
SECRET_NOT_GRANTED = "secret_not_granted"
PLACEHOLDER_NOT_ALLOWED_HERE = "placeholder_not_allowed_here"
PLAINTEXT_HTTP = "plaintext_http"
DESTINATION_NOT_ALLOWED = "destination_not_allowed"
DESTINATION_NOT_GRANTED = "destination_not_granted"
TOO_MANY_PLACEHOLDERS = "too_many_placeholders"
AMBIGUOUS_PATH = "ambiguous_path"
SECRET_UNAVAILABLE = "secret_unavailable"
SECRET_VALUE_UNSAFE = "secret_value_unsafe"
AUDIT_UNAVAILABLE = "audit_unavailable"
GRANT_STORE_UNAVAILABLE = "grant_store_unavailable"
STREAMING_NOT_SUPPORTED = "streaming_not_supported"
BODY_TOO_LARGE = "body_too_large"  # 413: an encoded body inflates past the decoding bounds
BODY_NOT_DECODABLE = "body_not_decodable"  # 415: unknown or corrupt Content-Encoding
RESPONSE_WITHHELD = "response_withheld"  # 502: the answer could not be scrubbed
HEADERS_TOO_LARGE = "headers_too_large"
UPGRADE_NOT_ALLOWED = "upgrade_not_allowed"
METHOD_OVERRIDE_REFUSED = "method_override_refused"
INTERNAL_ERROR = "internal_error"
HEADER_ALREADY_SET = "header_already_set"  # the agent sent a header a policy template sets
SIGV4_MALFORMED = "sigv4_malformed"  # 400: a placeholder-key SigV4 signature we cannot read
SIGV4_UNSUPPORTED = "sigv4_unsupported"  # 400: e.g. chunk-signed uploads (cannot be re-signed)
SIGV4_DATE_OUT_OF_RANGE = "sigv4_date_out_of_range"
AWS_SCOPE_NOT_ALLOWED = "aws_scope_not_allowed"  # service or region outside the destination
RATE_LIMITED = "rate_limited"  # 429: the grant's rate for a secret it carries is spent for now
ALLOWED = "allowed"
INJECTED = "injected"
RESIGNED = "resigned"  # an AWS request signed again with the real key
