"""AWS SigV4 re-signing end to end: boto3 with placeholder credentials, the real proxy, and a
local moto server over HTTPS that verifies every signature against the key held in its IAM.

moto checks SigV4 Authorization headers once INITIAL_NO_AUTH_ACTION_COUNT requests have been
served; the setup (IAM user, access key, bucket) runs before that is switched on, and every
request after it must be signed with the real key. Presigned URLs are not verified by moto, so
they are covered by the botocore cross-checks in test_sigv4.py.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.parsers import ResponseParserError
from werkzeug.serving import BaseWSGIServer, make_server

from broker_proxy.devtools.local_pki import write_pki
from broker_proxy.devtools.proxy_process import ProxyProcess
from broker_proxy.grants.issuer import issue_grant
from broker_proxy.grants.sqlite_store import SqliteGrantStore
from broker_proxy.home import Home
from broker_proxy.policy.loader import load_policy
from broker_proxy.time_source import utc_now
from tests.conftest import random_master_key
from tests.replay_property import assert_replay_unchanged

pytestmark = pytest.mark.e2e

S3_HOST = "s3.us-east-1.amazonaws.com"
S3_EU_HOST = "s3.eu-west-1.amazonaws.com"
STS_HOST = "sts.amazonaws.com"
IAM_HOST = "iam.amazonaws.com"
AWS_HOSTS = (S3_HOST, S3_EU_HOST, STS_HOST, IAM_HOST)
PLACEHOLDER_ID = "AKIAPLACEHOLDER23456"
PLACEHOLDER_SECRET = "placeholder-secret-key-not-a-real-one"
BUCKET = "agent-bucket"

POLICY = """\
version: 1
secrets:
  aws:
    from: env:E2E_AWS_CREDENTIALS
    sign: aws-sigv4
    placeholder: {placeholder}
    destinations:
      - host: "*.amazonaws.com"
        port: {port}
        aws: {{services: [s3, sts], regions: [us-east-1]}}
agents:
  bot:
    secrets: [aws]
network:
  allow_addresses: [127.0.0.0/8]
"""


class CountingApp:
    """moto's WSGI app, counting what reaches it: "blocked" must mean "nothing was sent"."""

    def __init__(self) -> None:
        # boto3 and moto are imported where they are used: collecting the suite (once per
        # pytest-xdist worker) does not pay the second of CPU their imports take.
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

        self.app = DomainDispatcherApplication(create_backend_app)
        self.hosts: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.hosts.append(environ.get("HTTP_HOST", ""))
        return self.app(environ, start_response)


@dataclass
class AwsStack:
    root: Path
    home: Home
    proxy: ProxyProcess
    moto: CountingApp
    port: int
    upstream_ca: Path
    real: dict[str, str]
    token: str

    def client(self, service: str, host: str, region: str = "us-east-1", *,
               via_proxy: bool = True, key_id: str = PLACEHOLDER_ID,
               secret_key: str = PLACEHOLDER_SECRET) -> Any:
        proxies = {"https": self.proxy.proxy_url(self.token, "bot")} if via_proxy else {}
        # Without the proxy, nothing resolves the AWS names here: go to moto's address directly
        # (moto then picks the service from the credential scope).
        endpoint = f"https://{host if via_proxy else '127.0.0.1'}:{self.port}"
        import boto3

        return boto3.client(
            service, endpoint_url=endpoint, region_name=region,
            aws_access_key_id=key_id, aws_secret_access_key=secret_key,
            verify=str(self.proxy.ca_path if via_proxy else self.upstream_ca),
            config=Config(proxies=proxies, s3={"addressing_style": "path"},
                          retries={"max_attempts": 1}))


def _serve_moto(app: CountingApp, cert: Path, key: Path) -> BaseWSGIServer:
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler,
                         ssl_context=(str(cert), str(key)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AwsStack]:
    import boto3
    from moto import settings as moto_settings

    root = tmp_path_factory.mktemp("aws")
    pki = write_pki(root / "pki", list(AWS_HOSTS), ["127.0.0.1"])
    previous_count = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
    moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = float("inf")
    app = CountingApp()
    server = _serve_moto(app, pki.cert_path, pki.key_path)
    port = server.server_port
    proxy = None
    try:
        # Setup straight against moto (no auth yet): a user, its key, and the bucket.
        setup = {"region_name": "us-east-1", "aws_access_key_id": "AKIASETUPSETUPSETUP2",
                 "aws_secret_access_key": "setup", "verify": str(pki.ca_cert_path)}
        iam = boto3.client("iam", endpoint_url=f"https://127.0.0.1:{port}", **setup)
        iam.create_user(UserName="agent-user")
        iam.put_user_policy(UserName="agent-user", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="agent-user")["AccessKey"]
        boto3.client("s3", endpoint_url=f"https://127.0.0.1:{port}", **setup,
                     config=Config(s3={"addressing_style": "path"})).create_bucket(Bucket=BUCKET)
        real = {"access_key_id": key["AccessKeyId"], "secret_access_key": key["SecretAccessKey"]}
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # from now on moto checks signatures

        home = Home(root / "home").ensure()
        policy_file = root / "policy.yaml"
        policy_file.write_text(POLICY.format(placeholder=PLACEHOLDER_ID, port=port))
        env = dict(os.environ, BROKER_PROXY_MASTER_KEY=random_master_key(),
                   E2E_AWS_CREDENTIALS=json.dumps(real))
        proxy = ProxyProcess(home.root, policy_file, upstream_ca=pki.ca_cert_path,
                             resolve={host: "127.0.0.1" for host in AWS_HOSTS}, env=env,
                             log_path=root / "proxy.log").start()
        store = SqliteGrantStore(home.grants_db)
        try:
            grant = issue_grant(load_policy(policy_file), store, agent="bot", task="aws e2e",
                                secrets=["aws"], ttl=None, max_uses=None, now=utc_now(),
                                proxy_url_base=proxy.info["listen"])
        finally:
            store.close()
        yield AwsStack(root, home, proxy, app, port, pki.ca_cert_path, real, grant.token)
    finally:
        if proxy is not None:
            proxy.stop()
        server.shutdown()
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = previous_count
    # Invariant 1 (docs/ARCHITECTURE.md): the real secret key is in nothing the proxy wrote.
    written = (root / "proxy.log").read_text(errors="replace")
    written += (root / "home").joinpath(home.audit_log.name).read_text(errors="replace")
    assert real["secret_access_key"] not in written
    assert_replay_unchanged(home.audit_log, root / "policy.yaml")


def test_s3_put_and_get_with_placeholder_credentials_through_the_proxy(aws: AwsStack) -> None:
    s3 = aws.client("s3", S3_HOST)
    body = secrets.token_bytes(2048)
    s3.put_object(Bucket=BUCKET, Key="dir/report one.bin", Body=body)
    got = s3.get_object(Bucket=BUCKET, Key="dir/report one.bin")["Body"].read()
    assert got == body
    listed = s3.list_objects_v2(Bucket=BUCKET, Prefix="dir/")
    assert [item["Key"] for item in listed["Contents"]] == ["dir/report one.bin"]


def test_sts_get_caller_identity_with_placeholder_credentials_through_the_proxy(
        aws: AwsStack) -> None:
    identity = aws.client("sts", STS_HOST).get_caller_identity()
    assert identity["Arn"].endswith(":user/agent-user")


def test_placeholder_credentials_without_the_proxy_are_rejected_by_aws(aws: AwsStack) -> None:
    with pytest.raises(ClientError) as refused:
        aws.client("sts", STS_HOST, via_proxy=False).get_caller_identity()
    assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # The same call with the real key works: moto really checks the signature.
    real = aws.client("sts", STS_HOST, via_proxy=False, key_id=aws.real["access_key_id"],
                      secret_key=aws.real["secret_access_key"])
    assert real.get_caller_identity()["Arn"].endswith(":user/agent-user")


@pytest.mark.parametrize(("service", "host", "region", "call"), [
    ("s3", S3_EU_HOST, "eu-west-1", lambda c: c.list_objects_v2(Bucket=BUCKET)),
    ("iam", IAM_HOST, "us-east-1", lambda c: c.list_users()),
])
def test_region_or_service_outside_the_destination_is_blocked(
        aws: AwsStack, service: str, host: str, region: str, call: Any) -> None:
    before = len(aws.moto.hosts)
    # The proxy answers with its JSON 403; boto3's XML parsers may not read it as an AWS error.
    with pytest.raises((ClientError, ResponseParserError)) as refused:
        call(aws.client(service, host, region))
    if isinstance(refused.value, ClientError):
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    else:
        assert "aws_scope_not_allowed" in str(refused.value)
    assert len(aws.moto.hosts) == before, "a blocked request reached the upstream"
    audit = aws.home.audit_log.read_text()
    assert '"reason": "aws_scope_not_allowed"' in audit or \
        '"reason":"aws_scope_not_allowed"' in audit
