"""The SigV4 signer and the re-signing of SDK requests, checked against botocore's own signer.

Each case lets botocore sign a request the way the SDK does (placeholder key), re-signs it with
broker_proxy.signing.aws_resign (real key), and asks botocore to compute the signature the real key
gives for the request as it leaves: the two must be equal, as AWS would check.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from broker_proxy.decision.active_policy import ActivePolicy
from broker_proxy.policy.loader import PolicyError, load_policy_text
from broker_proxy.request import codes
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.secrets.aws_credentials import AwsCredentials
from broker_proxy.secrets.value import SecretValue
from broker_proxy.signing import aws_resign, sigv4

PLACEHOLDER_ID = "AKIAPLACEHOLDER23456"
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def real_credentials(token: bool = False) -> AwsCredentials:
    key_id = "AKIA" + "".join(secrets.choice(_ALPHABET) for _ in range(16))
    return AwsCredentials(key_id, secrets.token_urlsafe(30),
                                     secrets.token_urlsafe(40) if token else None)


def sdk_request(method: str, url: str, *, service: str, region: str = "us-east-1",
                body: bytes = b"", headers: dict[str, str] | None = None, s3: bool = False,
                token: str | None = None, presign: int | None = None) -> OutboundRequest:
    """What the agent's SDK sends: signed with the placeholder key id."""
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {})
    credentials = Credentials(PLACEHOLDER_ID, "placeholder-secret-key", token)
    if presign is not None:
        auth: SigV4Auth = (S3SigV4QueryAuth if s3 else SigV4QueryAuth)(
            credentials, service, region, expires=presign)
    else:
        auth = (S3SigV4Auth if s3 else SigV4Auth)(credentials, service, region)
    auth.add_auth(request)
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    return OutboundRequest(
        method=method, scheme=parts.scheme, host=parts.hostname or "", port=parts.port or 443,
        path=parts.path or "/", query=parts.query,
        headers=(("Host", parts.netloc), *((k, v) for k, v in prepared.headers.items())),
        body=prepared.body or b"", host_header=parts.netloc)


def botocore_signature(request: OutboundRequest, headers: tuple[tuple[str, str], ...],
                       query: str, credentials: AwsCredentials,
                       signed: list[str], payload: str, amz_date: str, *, service: str,
                       region: str) -> str:
    """What AWS computes for the request as it leaves (the way moto's verifier does it)."""
    base = S3SigV4Auth if service == "s3" else SigV4Auth

    class FixedPayload(base):  # type: ignore[valid-type, misc]
        def payload(self, request: AWSRequest) -> str:
            return payload

    url = f"{request.scheme}://{request.host}{request.path}" + (f"?{query}" if query else "")
    aws_request = AWSRequest(method=request.method, url=url, data=request.body)
    for name, value in headers:
        if name.lower() in signed:
            aws_request.headers[name] = value  # appends: repeated headers stay repeated
    aws_request.context["timestamp"] = amz_date
    auth = FixedPayload(Credentials(credentials.access_key_id, credentials.secret_access_key,
                                    credentials.session_token), service, region)
    canonical = auth.canonical_request(aws_request)
    return auth.signature(auth.string_to_sign(aws_request, canonical), aws_request)


def header(headers: tuple[tuple[str, str], ...], name: str) -> str | None:
    found = [v for k, v in headers if k.lower() == name]
    assert len(found) <= 1
    return found[0] if found else None


def resign_header_form(request: OutboundRequest, credentials: AwsCredentials,
                       *, service: str, region: str = "us-east-1") -> tuple[str, str]:
    """Re-sign; return (our signature, botocore's signature for what leaves)."""
    found = aws_resign.find_signature(request, {PLACEHOLDER_ID: "aws"})
    assert isinstance(found, aws_resign.AgentSignature) and found.form == "header"
    resigned = aws_resign.resign(request, found, credentials, placeholder=PLACEHOLDER_ID)
    assert isinstance(resigned, aws_resign.Resigned), resigned
    parsed = sigv4.parse_authorization(header(resigned.headers, "authorization") or "")
    assert parsed.scope.access_key_id == credentials.access_key_id
    assert (parsed.scope.service, parsed.scope.region) == (service, region)
    ours = (header(resigned.headers, "authorization") or "").rsplit("Signature=", 1)[1]
    payload = header(resigned.headers, "x-amz-content-sha256") or hashlib.sha256(
        request.body).hexdigest()
    theirs = botocore_signature(request, resigned.headers, resigned.query, credentials,
                                list(parsed.signed_headers), payload, found.amz_date,
                                service=service, region=region)
    assert PLACEHOLDER_ID not in json.dumps(resigned.headers)
    return ours, theirs


def test_signature_matches_the_aws_test_suite_get_vanilla_vector() -> None:
    scope = sigv4.CredentialScope("AKIDEXAMPLE", "20150830", "us-east-1", "service")
    canonical = sigv4.canonical_request(
        "GET", "/", "", [("Host", "example.amazonaws.com"), ("X-Amz-Date", "20150830T123600Z")],
        ["host", "x-amz-date"], sigv4.EMPTY_SHA256)
    assert sigv4.signature("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", scope,
                           "20150830T123600Z", canonical) == (
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")


@pytest.mark.parametrize(("method", "url", "body", "extra"), [
    ("POST", "https://sts.amazonaws.com/", b"Action=GetCallerIdentity&Version=2011-06-15",
     {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}),
    ("GET", "https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15", b"", {}),
    ("POST", "https://dynamodb.us-east-1.amazonaws.com/", b'{"TableName": "t"}',
     {"X-Amz-Target": "DynamoDB_20120810.DescribeTable",
      "Content-Type": "application/x-amz-json-1.0"}),
    ("GET", "https://abc.execute-api.us-east-1.amazonaws.com/prod/a%20b/c~d?x=1&y=%2F", b"", {}),
    ("GET", "https://sts.amazonaws.com/?b=2&a=1&a=0&empty=", b"",
     {"X-Custom": "  spaced   out  value "}),
])
def test_resigned_request_verifies_with_the_real_key(method: str, url: str, body: bytes,
                                                     extra: dict[str, str]) -> None:
    host = urlsplit(url).hostname or ""
    service = "sts" if host.startswith("sts") else (
        "dynamodb" if host.startswith("dynamodb") else "execute-api")
    request = sdk_request(method, url, service=service, body=body, headers=extra)
    ours, theirs = resign_header_form(request, real_credentials(), service=service)
    assert ours == theirs


@pytest.mark.parametrize(("url", "body"), [
    ("http://s3.us-east-1.amazonaws.com/bucket/key.txt", b"hello world"),
    ("http://s3.us-east-1.amazonaws.com/bucket/dir/a%20b%2Bc.txt", b""),
    ("http://s3.us-east-1.amazonaws.com/bucket?list-type=2&prefix=a%20b%2F&delimiter=%2F", b""),
    ("http://bucket.s3.eu-west-1.amazonaws.com/?uploads", b""),
])
def test_s3_with_a_payload_hash_verifies_with_the_real_key(url: str, body: bytes) -> None:
    region = "eu-west-1" if "eu-west-1" in url else "us-east-1"
    request = sdk_request("PUT" if body else "GET", url, service="s3", region=region,
                          body=body, s3=True)
    assert header(request.headers, "x-amz-content-sha256") == hashlib.sha256(body).hexdigest()
    ours, theirs = resign_header_form(request, real_credentials(), service="s3", region=region)
    assert ours == theirs


@pytest.mark.parametrize("literal", ["UNSIGNED-PAYLOAD", "STREAMING-UNSIGNED-PAYLOAD-TRAILER"])
def test_s3_unsigned_payload_verifies_with_the_real_key(literal: str) -> None:
    request = sdk_request("PUT", "https://s3.us-east-1.amazonaws.com/bucket/k", service="s3",
                          body=b"data", s3=True)
    request = OutboundRequest(**{**_fields(request), "headers": tuple(
        (k, literal) if k.lower() == "x-amz-content-sha256" else (k, v)
        for k, v in request.headers)})
    ours, theirs = resign_header_form(request, real_credentials(), service="s3")
    assert ours == theirs


@pytest.mark.parametrize(("agent_token", "real_token"), [(True, True), (True, False),
                                                        (False, True)])
def test_session_token_is_the_real_one_or_none(agent_token: bool, real_token: bool) -> None:
    placeholder_token = "placeholder-session-token-" + secrets.token_hex(8)
    request = sdk_request("POST", "https://sts.amazonaws.com/", service="sts",
                          body=b"Action=GetCallerIdentity&Version=2011-06-15",
                          token=placeholder_token if agent_token else None)
    credentials = real_credentials(token=real_token)
    found = aws_resign.find_signature(request, {PLACEHOLDER_ID: "aws"})
    assert isinstance(found, aws_resign.AgentSignature)
    resigned = aws_resign.resign(request, found, credentials, placeholder=PLACEHOLDER_ID)
    assert isinstance(resigned, aws_resign.Resigned)
    assert header(resigned.headers, "x-amz-security-token") == credentials.session_token
    assert placeholder_token not in json.dumps(resigned.headers)
    signed = sigv4.parse_authorization(header(resigned.headers, "authorization") or "")
    assert ("x-amz-security-token" in signed.signed_headers) is real_token
    ours, theirs = resign_header_form(request, credentials, service="sts")
    assert ours == theirs


@pytest.mark.parametrize(("url", "service", "s3"), [
    ("https://s3.us-east-1.amazonaws.com/bucket/some%20key.txt", "s3", True),
    ("https://s3.us-east-1.amazonaws.com/bucket/k?versionId=3", "s3", True),
    ("https://sts.amazonaws.com/?Action=GetCallerIdentity&Version=2011-06-15", "sts", False),
])
@pytest.mark.parametrize("token", [False, True])
def test_presigned_url_verifies_with_the_real_key(url: str, service: str, s3: bool,
                                                  token: bool) -> None:
    request = sdk_request("GET", url, service=service, s3=s3, presign=600,
                          token="placeholder-token" if token else None)
    credentials = real_credentials(token=token)
    found = aws_resign.find_signature(request, {PLACEHOLDER_ID: "aws"})
    assert isinstance(found, aws_resign.AgentSignature) and found.form == "query"
    resigned = aws_resign.resign(request, found, credentials, placeholder=PLACEHOLDER_ID)
    assert isinstance(resigned, aws_resign.Resigned)
    params = dict(sigv4.query_pairs(resigned.query))
    assert params["X-Amz-Credential"].startswith(credentials.access_key_id + "/")
    assert params.get("X-Amz-Security-Token") == credentials.session_token
    assert PLACEHOLDER_ID not in resigned.query and "placeholder-token" not in resigned.query
    unsigned = sigv4.encode_query((k, v) for k, v in sigv4.query_pairs(resigned.query)
                                  if k != "X-Amz-Signature")
    payload = sigv4.UNSIGNED_PAYLOAD if s3 else sigv4.EMPTY_SHA256
    theirs = botocore_signature(request, resigned.headers, unsigned, credentials,
                                params["X-Amz-SignedHeaders"].split(";"), payload,
                                params["X-Amz-Date"], service=service, region="us-east-1")
    assert params["X-Amz-Signature"] == theirs


def test_chunk_signed_upload_is_refused_not_half_signed() -> None:
    request = sdk_request("PUT", "https://s3.us-east-1.amazonaws.com/b/k", service="s3", s3=True,
                          body=b"x")
    request = OutboundRequest(**{**_fields(request), "headers": tuple(
        (k, "STREAMING-AWS4-HMAC-SHA256-PAYLOAD") if k.lower() == "x-amz-content-sha256"
        else (k, v) for k, v in request.headers)})
    found = aws_resign.find_signature(request, {PLACEHOLDER_ID: "aws"})
    assert isinstance(found, aws_resign.AgentSignature)
    refused = aws_resign.resign(request, found, real_credentials(), placeholder=PLACEHOLDER_ID)
    assert isinstance(refused, aws_resign.Refusal) and refused.code == codes.SIGV4_UNSUPPORTED


def test_request_signed_with_another_key_is_left_to_the_ordinary_path() -> None:
    request = sdk_request("GET", "https://sts.amazonaws.com/?Action=GetCallerIdentity",
                          service="sts")
    assert aws_resign.find_signature(request, {"AKIAOTHERPLACEHOLDER": "aws"}) is None


def test_two_signatures_in_one_request_are_refused() -> None:
    request = sdk_request("GET", "https://sts.amazonaws.com/?Action=GetCallerIdentity",
                          service="sts")
    doubled = OutboundRequest(**{**_fields(request), "headers": (
        *request.headers, ("Authorization", header(request.headers, "authorization") or ""))})
    refused = aws_resign.find_signature(doubled, {PLACEHOLDER_ID: "aws"})
    assert isinstance(refused, aws_resign.Refusal) and refused.code == codes.SIGV4_MALFORMED


def _fields(request: OutboundRequest) -> dict[str, object]:
    return {name: getattr(request, name) for name in OutboundRequest.__slots__}


# --- the decision: destination, scope, date, secret format -------------------------------------

POLICY = """\
version: 1
secrets:
  aws:
    from: env:UNUSED
    sign: aws-sigv4
    placeholder: AKIAPLACEHOLDER23456
    destinations:
      - host: "*.amazonaws.com"
        aws: {services: [s3, sts], regions: [us-east-1]}
"""


def plan(request: OutboundRequest, credentials: AwsCredentials,
         now: datetime | None = None, grant: tuple[str, ...] = ("aws",)
         ) -> aws_resign.Resigned | aws_resign.Refusal | None:
    value = json.dumps({"access_key_id": credentials.access_key_id,
                        "secret_access_key": credentials.secret_access_key})
    return aws_resign.plan(request, grant, ActivePolicy.build(load_policy_text(POLICY)),
                           now or datetime.now(UTC), lambda secret: SecretValue(secret.name, value))


def test_sigv4_request_inside_the_destination_is_resigned() -> None:
    request = sdk_request("GET", "https://s3.us-east-1.amazonaws.com/b/k", service="s3", s3=True)
    credentials = real_credentials()
    resigned = plan(request, credentials)
    assert isinstance(resigned, aws_resign.Resigned)
    assert resigned.scrub["aws"] == (credentials.secret_access_key, PLACEHOLDER_ID)


@pytest.mark.parametrize(("url", "service", "region", "code"), [
    ("https://s3.eu-west-1.amazonaws.com/b/k", "s3", "eu-west-1", codes.AWS_SCOPE_NOT_ALLOWED),
    ("https://iam.amazonaws.com/?Action=ListUsers", "iam", "us-east-1",
     codes.AWS_SCOPE_NOT_ALLOWED),
    ("https://s3.us-east-1.evil.example/b/k", "s3", "us-east-1", codes.DESTINATION_NOT_ALLOWED),
    ("http://s3.us-east-1.amazonaws.com/b/k", "s3", "us-east-1", codes.PLAINTEXT_HTTP),
])
def test_sigv4_request_outside_the_destination_is_refused(url: str, service: str, region: str,
                                                          code: str) -> None:
    request = sdk_request("GET", url, service=service, region=region, s3=service == "s3")
    refused = plan(request, real_credentials())
    assert isinstance(refused, aws_resign.Refusal) and refused.code == code


def test_sigv4_secret_not_in_the_grant_is_refused() -> None:
    request = sdk_request("GET", "https://sts.amazonaws.com/?Action=X", service="sts")
    refused = plan(request, real_credentials(), grant=("other",))
    assert isinstance(refused, aws_resign.Refusal) and refused.code == codes.SECRET_NOT_GRANTED


def test_stale_or_future_signature_date_is_refused() -> None:
    request = sdk_request("GET", "https://sts.amazonaws.com/?Action=X", service="sts")
    for skew in (timedelta(minutes=20), -timedelta(minutes=20)):
        refused = plan(request, real_credentials(), now=datetime.now(UTC) + skew)
        assert isinstance(refused, aws_resign.Refusal)
        assert refused.code == codes.SIGV4_DATE_OUT_OF_RANGE


def test_secret_that_is_not_aws_credentials_fails_closed_without_its_value() -> None:
    request = sdk_request("GET", "https://sts.amazonaws.com/?Action=X", service="sts")
    value = "not-json-" + secrets.token_urlsafe(20)
    refused = aws_resign.plan(request, ("aws",), ActivePolicy.build(load_policy_text(POLICY)),
                              datetime.now(UTC), lambda secret: SecretValue(secret.name, value))
    assert isinstance(refused, aws_resign.Refusal)
    assert refused.status == 503 and value not in refused.message


@pytest.mark.parametrize(("change", "message"), [
    ("    placeholder: AKIAPLACEHOLDER23456\n", "    placeholder: not-a-key-id\n"),
    ("        aws: {services: [s3, sts], regions: [us-east-1]}\n", ""),
    ("    sign: aws-sigv4\n", "    sign: aws-sigv4\n    inject: [header]\n"),
    ("    sign: aws-sigv4\n", "    sign: aws-sigv2\n"),
    ("    sign: aws-sigv4\n", ""),
    ("regions: [us-east-1]", "regions: []"),
])
def test_policy_rejects_a_sigv4_secret_that_cannot_be_used_safely(change: str,
                                                                  message: str) -> None:
    with pytest.raises(PolicyError):
        load_policy_text(POLICY.replace(change, message))
