"""AWS SigV4 re-signing: the agent's SDK signs with a placeholder key, the broker signs for real.

The agent holds a placeholder access key id (in the real format, so SDKs accept it) and a
placeholder secret key. Its SDK signs every request with them; the signature is worthless, but
the Authorization header (or a presigned URL's X-Amz-Credential) names the placeholder key id,
and the credential scope names the service and region the request is for. Here that request is
recognised, checked against the secret's destinations (host, port, method, path, and the
``aws:`` services and regions), and signed again with the real key. The real secret key never
leaves this process: only signatures made with it do, and only to allowed destinations.

What cannot be re-signed correctly is refused rather than forwarded half-signed: chunk-signed
uploads (``STREAMING-AWS4-HMAC-SHA256-PAYLOAD``, each chunk carries a signature chained to the
seed) and bodies whose bytes on the wire we do not see (``Content-Encoding`` without an
``x-amz-content-sha256`` header).

The secret's value is JSON: ``{"access_key_id": "...", "secret_access_key": "...",
"session_token": "..."}`` (``session_token`` only for temporary credentials).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, Protocol

from broker_proxy.policy.destinations import path_matches
from broker_proxy.request import codes
from broker_proxy.request.model_rules import MODEL_NOT_ALLOWED, model_problem
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.request.paths import AmbiguousPath, canonical_path
from broker_proxy.secrets.aws_credentials import (
    AwsCredentials,
    AwsCredentialsError,
    parse_credentials,
)
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.signing import sigv4
from broker_proxy.signing.sigv4 import CredentialScope, SigV4FormatError

if TYPE_CHECKING:
    from broker_proxy.policy.destinations import DestinationIndex
    from broker_proxy.policy.model import Policy, SecretPolicy
    from broker_proxy.secrets.value import SecretValue

# AWS refuses a header-signed request whose date is more than 15 minutes off; so do we, so a
# re-signed request cannot be replayed later than AWS would allow anyway.
MAX_CLOCK_SKEW = timedelta(minutes=15)
MAX_PRESIGN_EXPIRES = 7 * 24 * 3600  # the SigV4 limit for X-Amz-Expires
# Payload hashes that stand for themselves in the canonical request: nothing per chunk to sign.
_LITERAL_PAYLOADS = frozenset({sigv4.UNSIGNED_PAYLOAD, "STREAMING-UNSIGNED-PAYLOAD-TRAILER"})
_HEX_SHA256 = re.compile(r"[0-9a-f]{64}")
_SECURITY_TOKEN = "x-amz-security-token"


class SigningPolicy(Protocol):
    """What re-signing reads of the policy in force (decision/active_policy.ActivePolicy): the
    signer sits below the decision, which hands its policy in."""

    @property
    def policy(self) -> Policy: ...

    @property
    def index(self) -> DestinationIndex: ...

    @property
    def sigv4_placeholders(self) -> dict[str, str]:
        """Placeholder key id -> secret name, for the secrets the proxy signs for."""
        ...


class Refusal(NamedTuple):
    """A SigV4 request the broker will not sign: status, stable error code, one-line message."""

    status: int
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class AgentSignature:
    """Where and how the agent's SDK signed with a placeholder key id."""

    secret: str  # the policy secret whose placeholder is the key id
    form: str  # "header" (Authorization) or "query" (presigned URL)
    scope: CredentialScope
    amz_date: str
    signed_headers: tuple[str, ...]
    expires: int | None = None  # presigned URLs only, seconds


@dataclass(frozen=True, slots=True)
class Resigned:
    """The request as it leaves: headers and query hold a real signature, never the key."""

    secret: str
    headers: tuple[tuple[str, str], ...] = field(repr=False)
    query: str = field(repr=False)
    fingerprint_of: str = field(repr=False)  # the secret key, for the audit fingerprint only
    scrub: dict[str, tuple[str, str]] = field(repr=False, default_factory=dict)


def sigv4_placeholders(policy: SigningPolicy) -> dict[str, str]:
    """Placeholder key id -> secret name, for the secrets the proxy signs for."""
    return policy.sigv4_placeholders


def plan(request: OutboundRequest, grant_secrets: frozenset[str] | tuple[str, ...],
         policy: SigningPolicy, now: datetime,
         resolve: Callable[[SecretPolicy], SecretValue]) -> Resigned | Refusal | None:
    """None when the request is not signed with one of our placeholder key ids."""
    placeholders = sigv4_placeholders(policy)
    if not placeholders:
        return None
    found = find_signature(request, placeholders)
    if found is None or isinstance(found, Refusal):
        return found
    if found.secret not in grant_secrets:
        # Same answer whether the name exists or not: no probing of the policy.
        return Refusal(403, codes.SECRET_NOT_GRANTED,
                       "a placeholder names a secret this grant does not hold")
    if refusal := destination_refusal(found, policy, request) or date_refusal(found, now):
        return refusal
    secret = policy.policy.secrets[found.secret]
    # Model rules (Bedrock's model id in the path) before anything is resolved or signed.
    if secret.models and (problem := model_problem(request, secret.models, secret.name)):
        return Refusal(403, MODEL_NOT_ALLOWED, problem)
    try:
        credentials = parse_credentials(secret.name, resolve(secret))
    except SecretUnavailable as error:
        return Refusal(503, codes.SECRET_UNAVAILABLE, str(error))
    except AwsCredentialsError as error:
        return Refusal(503, codes.SECRET_VALUE_UNSAFE, str(error))
    return resign(request, found, credentials, placeholder=secret.placeholder)


def find_signature(request: OutboundRequest,
                   placeholders: Mapping[str, str]) -> AgentSignature | Refusal | None:
    authorizations = [v for k, v in request.headers if k.lower() == "authorization"]
    signed_header = [v for v in authorizations if v.lstrip().startswith(sigv4.ALGORITHM)]
    pairs = sigv4.query_pairs(request.query)
    credentials = [v for k, v in pairs if k == "X-Amz-Credential"]
    ours = _mentions_placeholder(signed_header + credentials, placeholders)
    if not ours:
        return None  # not signed with a key we hold: the ordinary path decides
    if len(authorizations) > 1 or (signed_header and credentials) or len(credentials) > 1:
        return _malformed("a request may carry exactly one SigV4 signature")
    try:
        if signed_header:
            parsed = sigv4.parse_authorization(signed_header[0])
            scope, signed, expires = parsed.scope, parsed.signed_headers, None
            dates = [v for k, v in request.headers if k.lower() == "x-amz-date"]
            if len(dates) != 1:
                return _malformed("a SigV4-signed request needs exactly one X-Amz-Date header")
            amz_date, form = dates[0].strip(), "header"
        else:
            params = _single_params(pairs)
            if params.get("X-Amz-Algorithm") != sigv4.ALGORITHM:
                return _malformed("a presigned URL needs X-Amz-Algorithm=AWS4-HMAC-SHA256")
            if "X-Amz-Signature" not in params:
                return _malformed("a presigned URL needs X-Amz-Signature")
            scope = sigv4.parse_credential(params["X-Amz-Credential"])
            signed = sigv4.parse_signed_headers(params.get("X-Amz-SignedHeaders", ""))
            amz_date, form = params.get("X-Amz-Date", ""), "query"
            expires_text = params.get("X-Amz-Expires", "")
            if not expires_text.isdigit() or not 1 <= int(expires_text) <= MAX_PRESIGN_EXPIRES:
                return _malformed(f"X-Amz-Expires must be 1 to {MAX_PRESIGN_EXPIRES} seconds")
            expires = int(expires_text)
        sigv4.check_amz_date(amz_date, scope)
    except SigV4FormatError as error:
        return _malformed(str(error))
    if scope.access_key_id not in placeholders:
        return _malformed("the SigV4 credential must be exactly the placeholder key id")
    if "host" not in signed:
        # Unsigned, the Host could be changed after signing without AWS noticing.
        return _malformed("SignedHeaders must include host")
    return AgentSignature(placeholders[scope.access_key_id], form, scope, amz_date, signed,
                          expires)


def _mentions_placeholder(values: list[str], placeholders: Mapping[str, str]) -> bool:
    return any(placeholder in value for value in values for placeholder in placeholders)


def _single_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in pairs:
        if name.lower().startswith("x-amz-") and name in params:
            raise SigV4FormatError(f"{name} appears more than once in the query")
        params[name] = value
    return params


def _malformed(message: str) -> Refusal:
    return Refusal(400, codes.SIGV4_MALFORMED, message)


def destination_refusal(found: AgentSignature, policy: SigningPolicy,
                        request: OutboundRequest) -> Refusal | None:
    """Host, port, method, path as for any secret; then the scope's service and region."""
    name = found.secret
    if request.scheme != "https":
        return Refusal(403, codes.PLAINTEXT_HTTP, f'secret "{name}" is only sent over https')
    try:
        # The path is signed as sent, so it must already be the one spelling we match on.
        unambiguous = canonical_path(request.path) == request.path
    except AmbiguousPath:
        unambiguous = False
    if not unambiguous:
        return Refusal(403, codes.AMBIGUOUS_PATH, "this path cannot carry a SigV4 signature: "
                                                  "it is not in canonical form")
    where = (f"{request.method} {request.scheme}://{request.host}:{request.port}"
             f"{request.path}")
    place_allowed = False
    for destination in policy.index.destinations_for(name, request.scheme, request.host,
                                                     request.port):
        if request.method.upper() not in destination.methods:
            continue
        if destination.paths and not any(path_matches(g, request.path)
                                         for g in destination.paths):
            continue
        place_allowed = True
        aws = getattr(destination, "aws", None)
        if aws is not None and found.scope.service in aws.services and (
                found.scope.region in aws.regions):
            return None
    if not place_allowed:
        return Refusal(403, codes.DESTINATION_NOT_ALLOWED,
                       f'secret "{name}" may not be sent to {where}')
    return Refusal(403, codes.AWS_SCOPE_NOT_ALLOWED,
                   f'secret "{name}" may not sign for service "{found.scope.service}" in region '
                   f'"{found.scope.region}"')


def date_refusal(found: AgentSignature, now: datetime) -> Refusal | None:
    signed_at = datetime.strptime(found.amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    if signed_at - now > MAX_CLOCK_SKEW:
        return Refusal(403, codes.SIGV4_DATE_OUT_OF_RANGE,
                       "X-Amz-Date is in the future; check the agent's clock")
    if found.form == "query":
        if signed_at + timedelta(seconds=found.expires or 0) < now:
            return Refusal(403, codes.SIGV4_DATE_OUT_OF_RANGE, "the presigned URL has expired")
    elif now - signed_at > MAX_CLOCK_SKEW:
        return Refusal(403, codes.SIGV4_DATE_OUT_OF_RANGE,
                       "X-Amz-Date is more than 15 minutes old; check the agent's clock")
    return None


def resign(request: OutboundRequest, found: AgentSignature, credentials: AwsCredentials,
           placeholder: str) -> Resigned | Refusal:
    """Sign ``request`` again with the real key, in the same form the agent used."""
    try:
        if found.form == "header":
            headers, query = _resign_header(request, found, credentials)
        else:
            headers, query = _resign_query(request, found, credentials)
    except SigV4FormatError as error:
        return _malformed(str(error))
    except _Unsupported as error:
        return Refusal(400, codes.SIGV4_UNSUPPORTED, str(error))
    scrub = {found.secret: (credentials.secret_access_key, placeholder),
             f"{found.secret}.access_key_id": (credentials.access_key_id, placeholder)}
    if credentials.session_token:
        scrub[f"{found.secret}.session_token"] = (credentials.session_token, placeholder)
    return Resigned(found.secret, headers, query, credentials.secret_access_key, scrub)


class _Unsupported(Exception):
    """A request shape the broker cannot re-sign correctly."""


def _payload_hash(request: OutboundRequest, service: str, form: str) -> str:
    declared = [v.strip() for k, v in request.headers if k.lower() == "x-amz-content-sha256"]
    if len(declared) > 1:
        raise SigV4FormatError("x-amz-content-sha256 appears more than once")
    if form == "query" and service == "s3":
        return sigv4.UNSIGNED_PAYLOAD  # presigned S3 URLs never sign the payload
    if declared:
        value = declared[0]
        if value in _LITERAL_PAYLOADS or _HEX_SHA256.fullmatch(value):
            # S3 checks the body against this value itself; we sign the claim as made.
            return value
        if value.startswith("STREAMING-"):
            raise _Unsupported(f"{value} uploads sign every chunk and cannot be re-signed; "
                               "use UNSIGNED-PAYLOAD or a plain payload hash")
        raise SigV4FormatError("x-amz-content-sha256 is not a SHA-256 hex digest")
    if any(k.lower() == "content-encoding" for k, _ in request.headers) and request.body:
        # The body we see is decoded; the signature must cover the bytes as sent.
        raise _Unsupported("an encoded body needs an x-amz-content-sha256 header to be re-signed")
    return hashlib.sha256(request.body).hexdigest()


def _resign_header(request: OutboundRequest, found: AgentSignature,
                   credentials: AwsCredentials) -> tuple[tuple[tuple[str, str], ...], str]:
    signed = [name for name in found.signed_headers if name != _SECURITY_TOKEN]
    headers: list[tuple[str, str]] = []
    for name, value in request.headers:
        # The agent's session token is a placeholder too: the real one (if any) replaces it.
        if name.lower() != _SECURITY_TOKEN:
            headers.append((name, value))
    if credentials.session_token:
        headers.append(("X-Amz-Security-Token", credentials.session_token))
        signed.append(_SECURITY_TOKEN)
    payload = _payload_hash(request, found.scope.service, "header")
    canonical = sigv4.canonical_request(
        request.method, sigv4.canonical_uri(request.path, found.scope.service),
        sigv4.canonical_query(sigv4.query_pairs(request.query)), headers, signed, payload)
    signature = sigv4.signature(credentials.secret_access_key, found.scope, found.amz_date,
                                canonical)
    value = sigv4.authorization(credentials.access_key_id, found.scope, signed, signature)
    rewritten = tuple((name, value) if name.lower() == "authorization" else (name, old)
                      for name, old in headers)
    return rewritten, request.query


def _resign_query(request: OutboundRequest, found: AgentSignature,
                  credentials: AwsCredentials) -> tuple[tuple[tuple[str, str], ...], str]:
    pairs: list[tuple[str, str]] = []
    for name, value in sigv4.query_pairs(request.query):
        if name in ("X-Amz-Signature", "X-Amz-Security-Token"):
            continue
        if name == "X-Amz-Credential":
            value = found.scope.credential(credentials.access_key_id)
        pairs.append((name, value))
    if credentials.session_token:
        pairs.append(("X-Amz-Security-Token", credentials.session_token))
    headers = tuple((k, v) for k, v in request.headers if k.lower() != _SECURITY_TOKEN)
    payload = _payload_hash(request, found.scope.service, "query")
    canonical = sigv4.canonical_request(
        request.method, sigv4.canonical_uri(request.path, found.scope.service),
        sigv4.canonical_query(pairs), headers, found.signed_headers, payload)
    signature = sigv4.signature(credentials.secret_access_key, found.scope, found.amz_date,
                                canonical)
    return headers, sigv4.encode_query([*pairs, ("X-Amz-Signature", signature)])
