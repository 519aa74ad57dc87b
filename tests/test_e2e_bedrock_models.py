"""Bedrock model rules behind SigV4, end to end: boto3's bedrock-runtime client with placeholder
credentials, the real proxy, and a local HTTPS stand-in for bedrock-runtime.us-east-1 that
checks every signature it receives against the real key (botocore's own signer).

The secret's ``models`` globs are matched against the model id in the path (``/model/ID/
converse`` ...); a refused model is answered 403 model_not_allowed before anything is signed, so
the stand-in sees nothing and the audit record carries no use of the key.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from broker_proxy.devtools.echo_server import EchoServer, ReceivedRequest
from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.request.model_rules import UnreadableModel, requested_models
from broker_proxy.request.outbound import OutboundRequest
from broker_proxy.signing import sigv4
from broker_proxy.time_source import utc_now
from tests.conftest import random_master_key

pytestmark = pytest.mark.e2e

HOST = "bedrock-runtime.us-east-1.amazonaws.com"
PLACEHOLDER_ID = "AKIAPLACEHOLDER23456"
PLACEHOLDER_SECRET = "placeholder-secret-key-not-a-real-one"
REAL = {"access_key_id": "AKIAREALREALREAL2345",
        "secret_access_key": "real-" + os.urandom(12).hex()}
ALLOWED = "anthropic.claude-3-haiku-20240307-v1:0"

POLICY = """\
version: 1
secrets:
  aws:
    from: env:E2E_AWS_CREDENTIALS
    sign: aws-sigv4
    placeholder: {placeholder}
    models: ["anthropic.claude-3-haiku-*", "amazon.nova-lite-v1:0"]
    destinations:
      - host: "{host}"
        port: {port}
        aws: {{services: [bedrock], regions: [us-east-1]}}
agents:
  bot:
    secrets: [aws]
network:
  allow_addresses: [127.0.0.0/8]
"""

CONVERSE_ANSWER = {"output": {"message": {"role": "assistant", "content": [{"text": "ok"}]}},
                   "stopReason": "end_turn", "metrics": {"latencyMs": 1},
                   "usage": {"inputTokens": 3, "outputTokens": 1, "totalTokens": 4}}


def signature_is_real(request: ReceivedRequest, secret: str | None = None) -> bool:
    """Whether botocore, signing what arrived with the real key, gets the same signature."""
    authorization = request.header("authorization") or ""
    parsed = sigv4.parse_authorization(authorization)
    if parsed.scope.access_key_id != REAL["access_key_id"]:
        return False
    signed = set(parsed.signed_headers)
    url = f"https://{HOST}{request.path}"
    aws_request = AWSRequest(method=request.method, url=url, data=request.body, headers={
        key: value for key, value in request.headers if key.lower() in signed})
    aws_request.context["timestamp"] = request.header("x-amz-date")
    auth = SigV4Auth(Credentials(REAL["access_key_id"], secret or REAL["secret_access_key"]),
                     "bedrock",
                     "us-east-1")
    canonical = auth.canonical_request(aws_request)
    expected = auth.signature(auth.string_to_sign(aws_request, canonical), aws_request)
    return authorization.rstrip().endswith("Signature=" + expected)


def bedrock_reply(request: ReceivedRequest) -> tuple[int, dict[str, str], bytes]:
    if not signature_is_real(request):
        return 403, {"content-type": "application/json"}, b'{"message": "bad signature"}'
    if urlsplit(request.path).path.endswith("/converse"):
        return 200, {"content-type": "application/json"}, json.dumps(CONVERSE_ANSWER).encode()
    return 200, {"content-type": "application/json"}, b'{"completion": "ok"}'


@dataclass
class BedrockStack:
    root: Path
    home: Home
    proxy: ProxyProcess
    upstream: EchoServer
    port: int
    token: str

    def client(self) -> Any:
        import boto3
        return boto3.client(
            "bedrock-runtime", endpoint_url=f"https://{HOST}:{self.port}",
            region_name="us-east-1", aws_access_key_id=PLACEHOLDER_ID,
            aws_secret_access_key=PLACEHOLDER_SECRET, verify=str(self.proxy.ca_path),
            config=Config(proxies={"https": self.proxy.proxy_url(self.token, "bot")},
                          retries={"max_attempts": 1}))


@pytest.fixture(scope="module")
def bedrock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BedrockStack]:
    root = tmp_path_factory.mktemp("bedrock")
    pki = write_pki(root / "pki", [HOST])
    upstream = EchoServer(pki.cert_path, pki.key_path, reply=bedrock_reply).start()
    home = Home(root / "home").ensure()
    policy_file = root / "policy.yaml"
    policy_file.write_text(POLICY.format(placeholder=PLACEHOLDER_ID, host=HOST,
                                         port=upstream.port))
    env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
               E2E_AWS_CREDENTIALS=json.dumps(REAL))
    proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                         resolve={HOST: "127.0.0.1"}, env=env,
                         log_path=root / "proxy.log").start()
    store = SqliteGrantStore(home.grants_db)
    try:
        grant = issue_grant(load_policy(policy_file), store, agent="bot", task="bedrock e2e",
                            secrets=["aws"], ttl=None, max_uses=None, now=utc_now(),
                            proxy_url_base=proxy.info["listen"])
    finally:
        store.close()
    try:
        yield BedrockStack(root, home, proxy, upstream, upstream.port, grant.token)
    finally:
        proxy.stop()
        upstream.stop()
    written = (root / "proxy.log").read_text(errors="replace") + home.audit_log.read_text()
    assert REAL["secret_access_key"] not in written


@pytest.fixture(autouse=True)
def _clear(bedrock: BedrockStack) -> None:
    bedrock.upstream.clear()


def test_an_allowed_model_is_re_signed_and_answered(bedrock: BedrockStack) -> None:
    client = bedrock.client()
    answer = client.converse(modelId=ALLOWED,
                             messages=[{"role": "user", "content": [{"text": "hi"}]}])
    assert answer["output"]["message"]["content"][0]["text"] == "ok"
    invoked = client.invoke_model(modelId="amazon.nova-lite-v1:0", body=b'{"x": 1}')
    assert json.loads(invoked["body"].read()) == {"completion": "ok"}
    paths = [r.path for r in bedrock.upstream.requests]
    assert paths == ["/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse",
                     "/model/amazon.nova-lite-v1%3A0/invoke"]
    assert all(signature_is_real(r) for r in bedrock.upstream.requests)
    assert not signature_is_real(bedrock.upstream.requests[0], secret="another-key")


def test_an_arn_model_id_is_refused_by_the_path_check(bedrock: BedrockStack) -> None:
    # boto3 sends the ARN's "/" as %2F, which the proxy never forwards with a secret (an
    # upstream could decode it to another path): refused before the model is even read.
    arn = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us." + ALLOWED
    with pytest.raises(ClientError) as raised:
        bedrock.client().converse(modelId=arn, messages=[
            {"role": "user", "content": [{"text": "hi"}]}])
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert bedrock.upstream.requests == []
    records = [json.loads(line) for line in bedrock.home.audit_log.read_text().splitlines()]
    assert [r for r in records if r.get("event") == "request"][-1]["reason"] == "ambiguous_path"


@pytest.mark.parametrize("call", ["converse", "converse_stream", "invoke_model",
                                  "invoke_model_with_response_stream"])
def test_another_model_is_refused_before_anything_is_signed(bedrock: BedrockStack,
                                                             call: str) -> None:
    client = bedrock.client()
    if call.startswith("converse"):
        arguments: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": "hi"}]}]}
    else:
        arguments = {"body": b"{}"}
    with pytest.raises(ClientError) as raised:
        getattr(client, call)(modelId="anthropic.claude-3-opus-20240229-v1:0", **arguments)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert bedrock.upstream.requests == []
    records = [json.loads(line) for line in bedrock.home.audit_log.read_text().splitlines()]
    last = [r for r in records if r.get("event") == "request"][-1]
    assert last["decision"] == "deny" and last["reason"] == "model_not_allowed"
    assert not last.get("fingerprints")  # nothing was resolved or signed for it


def test_bedrock_model_ids_are_read_from_the_path() -> None:
    def models(path: str, host: str = HOST) -> list[str]:
        return requested_models(OutboundRequest("POST", "https", host, 443, path, "", (), b""))

    assert models("/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke") == [
        "anthropic.claude-3-haiku-20240307-v1:0"]
    arn = ("arn:aws:bedrock:us-east-1:123456789012:inference-profile/"
           "us.anthropic.claude-3-haiku-20240307-v1:0")
    encoded = arn.replace(":", "%3A").replace("/", "%2F")
    for action in ("invoke", "invoke-with-response-stream", "converse", "converse-stream"):
        assert models(f"/model/{encoded}/{action}") == [arn]
    assert models("/model/x/invoke", "bedrock-runtime-fips.us-west-2.amazonaws.com") == ["x"]
    assert models("/model/x/invoke", "example.test") == []  # only on Bedrock's hosts
    assert models("/guardrail/g/version/1/apply") == []
    with pytest.raises(UnreadableModel):
        models("/model/arn:aws:bedrock:us-east-1::foundation-model/x/invoke")
