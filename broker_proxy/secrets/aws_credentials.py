"""An AWS secret's value: JSON with the key id, the secret key and maybe a session token.

Read by the signer (signing/aws_resign.py signs with it) and by the scrubber (scrubbing/
grant_scrub.py scrubs the secret key and the token, not the JSON blob): it belongs with the
secret, below both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from broker_proxy import strict_json
from broker_proxy.policy.aws_fields import ACCESS_KEY_ID_PATTERN
from broker_proxy.secrets.value import SecretValue

_ACCESS_KEY_ID = re.compile(ACCESS_KEY_ID_PATTERN)


@dataclass(frozen=True, slots=True)
class AwsCredentials:
    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


class AwsCredentialsError(ValueError):
    """A secret whose value is not usable AWS credentials; the message never holds the value."""

    def __init__(self, name: str) -> None:
        super().__init__(f'secret "{name}" is not AWS credentials: expected JSON with '
                         "access_key_id, secret_access_key and optionally session_token")


def parse_credentials(name: str, value: SecretValue) -> AwsCredentials:
    try:
        data = strict_json.loads(value.reveal())
    except ValueError:
        raise AwsCredentialsError(name) from None
    if not isinstance(data, dict) or set(data) - {"access_key_id", "secret_access_key",
                                                  "session_token"}:
        raise AwsCredentialsError(name)
    key_id, secret, token = (data.get("access_key_id"), data.get("secret_access_key"),
                             data.get("session_token"))
    if not isinstance(key_id, str) or not _ACCESS_KEY_ID.fullmatch(key_id):
        raise AwsCredentialsError(name)
    # Printable ASCII only: the key is HMAC input and the token goes into a header.
    if not isinstance(secret, str) or not secret or not _printable(secret):
        raise AwsCredentialsError(name)
    if token is not None and (not isinstance(token, str) or not token or not _printable(token)):
        raise AwsCredentialsError(name)
    return AwsCredentials(key_id, secret, token)


def _printable(text: str) -> bool:
    return all("!" <= char <= "~" for char in text)
