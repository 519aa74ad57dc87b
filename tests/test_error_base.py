"""One error base: what the operator reads, and the status and code an answer takes, by class.

`describe_error` knows an error by its base (no hand-kept list of types), and the 413 vs 415 of
an undecodable request body comes from the error's class, not from its message text.
"""

from __future__ import annotations

import gzip

import pytest

from broker_proxy.admin_token import AdminApiError
from broker_proxy.audit.errors import AuditError, AuditWriteError
from broker_proxy.durations import DurationError
from broker_proxy.error_text import describe_error
from broker_proxy.errors import BrokerError
from broker_proxy.grants.store import GrantError, GrantStoreError
from broker_proxy.policy.resolve_pins import PinError
from broker_proxy.request import codes
from broker_proxy.runtime.home_lock import HomeBusy
from broker_proxy.runtime.replica import ReplicaIdError
from broker_proxy.scrubbing.content_decoding import (
    BodyNotDecodable,
    BodyTooLarge,
    DecodeLimits,
    decode_whole,
    parse_content_encoding,
)
from broker_proxy.secrets.backends import SecretUnavailable
from broker_proxy.secrets.master_key import MasterKeyError
from broker_proxy.secrets.vault import VaultError

# The ten types error_text kept by hand before the base existed: each is known by it now.
FORMERLY_LISTED = (AdminApiError, AuditError, DurationError, GrantError, HomeBusy,
                   MasterKeyError, PinError, ReplicaIdError, SecretUnavailable, VaultError)


@pytest.mark.parametrize("kind", FORMERLY_LISTED, ids=lambda k: k.__name__)
def test_every_formerly_listed_error_is_a_broker_error(kind: type) -> None:
    assert issubclass(kind, BrokerError)


def test_a_known_error_reads_as_one_line_and_a_bug_as_none() -> None:
    assert describe_error(AuditWriteError("cannot write\n  the log")) == (
        "broker-proxy: cannot write the log")
    assert describe_error(PinError("bad pin")) == "broker-proxy: bad pin"
    assert describe_error(RuntimeError("a bug")) is None
    assert describe_error(KeyError("a bug")) is None


def test_status_and_code_come_with_the_class() -> None:
    assert (BrokerError.status, BrokerError.code) == (500, codes.INTERNAL_ERROR)
    assert (AuditError.status, AuditError.code) == (503, codes.AUDIT_UNAVAILABLE)
    assert (SecretUnavailable.status, SecretUnavailable.code) == (503, codes.SECRET_UNAVAILABLE)
    assert (GrantStoreError.status, GrantStoreError.code) == (
        503, codes.GRANT_STORE_UNAVAILABLE)
    assert (BodyNotDecodable.status, BodyNotDecodable.code) == (415, codes.BODY_NOT_DECODABLE)
    assert (BodyTooLarge.status, BodyTooLarge.code) == (413, codes.BODY_TOO_LARGE)


def test_a_body_past_the_limits_is_too_large_and_a_corrupt_one_is_not() -> None:
    limits = DecodeLimits(max_output=1024)
    with pytest.raises(BodyTooLarge):
        decode_whole(gzip.compress(b"a" * 4096), parse_content_encoding("gzip"), limits)
    with pytest.raises(BodyNotDecodable) as corrupt:
        decode_whole(b"not gzip at all", parse_content_encoding("gzip"), limits)
    assert not isinstance(corrupt.value, BodyTooLarge)
