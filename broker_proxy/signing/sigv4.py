"""AWS Signature Version 4: parsing what an SDK signed, and signing it again with another key.

Written from the AWS documentation ("Create a signed AWS API request", "Authenticating
Requests: Using Query Parameters") with hmac/hashlib only, and checked against botocore's
signer in the tests. Only the parts the broker needs are here: the canonical request, the
string to sign, the derived key and the two places a signature lives (the Authorization header
and the X-Amz-* query parameters of a presigned URL).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
TERMINATOR = "aws4_request"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<credential>[^,\s]+)\s*,\s*"
    r"SignedHeaders=(?P<signed>[^,\s]+)\s*,\s*Signature=(?P<signature>[0-9a-f]{64})\s*"
)
_AMZ_DATE = re.compile(r"[0-9]{8}T[0-9]{6}Z")
_SCOPE_PART = re.compile(r"[a-z0-9-]{1,64}")
_HEADER_NAME = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+")


class SigV4FormatError(ValueError):
    """A SigV4 signature whose parts cannot be read (the message names the part, not a value)."""


@dataclass(frozen=True, slots=True)
class CredentialScope:
    """``KEYID/20240101/us-east-1/s3/aws4_request`` taken apart."""

    access_key_id: str
    date: str  # YYYYMMDD
    region: str
    service: str

    def scope(self) -> str:
        """The scope without the key id: what the string to sign names."""
        return f"{self.date}/{self.region}/{self.service}/{TERMINATOR}"

    def credential(self, access_key_id: str) -> str:
        return f"{access_key_id}/{self.scope()}"


@dataclass(frozen=True, slots=True)
class HeaderSignature:
    """The parts of an ``Authorization: AWS4-HMAC-SHA256 ...`` header."""

    scope: CredentialScope
    signed_headers: tuple[str, ...]  # lower-case, as the signer listed them


def parse_credential(credential: str) -> CredentialScope:
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != TERMINATOR:
        raise SigV4FormatError("the SigV4 credential is not KEYID/DATE/REGION/SERVICE/aws4_request")
    key_id, date, region, service, _ = parts
    if not key_id or not re.fullmatch(r"[0-9]{8}", date):
        raise SigV4FormatError("the SigV4 credential has no key id or a malformed date")
    if not _SCOPE_PART.fullmatch(region) or not _SCOPE_PART.fullmatch(service):
        raise SigV4FormatError("the SigV4 credential names a malformed region or service")
    return CredentialScope(key_id, date, region, service)


def parse_signed_headers(text: str) -> tuple[str, ...]:
    names = tuple(text.split(";"))
    if not all(_HEADER_NAME.fullmatch(name) for name in names) or len(set(names)) != len(names):
        raise SigV4FormatError("SignedHeaders must be distinct lower-case header names")
    return names


def parse_authorization(value: str) -> HeaderSignature:
    match = _AUTHORIZATION.fullmatch(value.strip())
    if match is None:
        raise SigV4FormatError("the Authorization header is not a SigV4 signature")
    return HeaderSignature(parse_credential(match["credential"]),
                           parse_signed_headers(match["signed"]))


def check_amz_date(amz_date: str, scope: CredentialScope) -> None:
    # The scope's date must be the request's date, or the derived key signs another day.
    if not _AMZ_DATE.fullmatch(amz_date) or amz_date[:8] != scope.date:
        raise SigV4FormatError("X-Amz-Date must be YYYYMMDDTHHMMSSZ on the credential's date")


def uri_encode(text: str, *, keep_slash: bool = False) -> str:
    """RFC 3986 unreserved characters stay, everything else is %XX in upper case (UTF-8)."""
    return quote(text, safe="-_.~/" if keep_slash else "-_.~")


def canonical_uri(path: str, service: str) -> str:
    """S3 signs the path as sent; every other service signs it encoded once more.

    The caller has already refused paths with dot or empty segments, so the normalisation
    the documentation asks for (remove dot segments) has nothing left to do.
    """
    if not path:
        return "/"
    return path if service == "s3" else quote(path, safe="/~")


def query_pairs(query: str) -> list[tuple[str, str]]:
    """A raw query string as decoded (name, value) pairs, in order; ``a`` is ``("a", "")``."""
    if not query:
        return []
    pairs = []
    for item in query.split("&"):
        name, _, value = item.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return pairs


def encode_query(pairs: Iterable[tuple[str, str]]) -> str:
    return "&".join(f"{uri_encode(name)}={uri_encode(value)}" for name, value in pairs)


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in pairs)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    """``name:value\\n`` per signed header; repeated headers joined by "," in the order sent."""
    lines = []
    for name in sorted(signed):
        values = [" ".join(value.split()) for key, value in headers if key.lower() == name]
        if not values:
            raise SigV4FormatError(f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{','.join(values)}\n")
    return "".join(lines)


def canonical_request(method: str, uri: str, query: str, headers: Sequence[tuple[str, str]],
                      signed: Sequence[str], payload_hash: str) -> str:
    return "\n".join([method.upper(), uri, query, canonical_headers(headers, signed),
                      ";".join(sorted(signed)), payload_hash])


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret_access_key: str, scope: CredentialScope) -> bytes:
    key = _hmac(("AWS4" + secret_access_key).encode("utf-8"), scope.date)
    for part in (scope.region, scope.service, TERMINATOR):
        key = _hmac(key, part)
    return key


def string_to_sign(amz_date: str, scope: CredentialScope, request: str) -> str:
    digest = hashlib.sha256(request.encode("utf-8")).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{scope.scope()}\n{digest}"


def signature(secret_access_key: str, scope: CredentialScope, amz_date: str,
              request: str) -> str:
    """The hex signature of a canonical request under the key of ``scope``'s day and place."""
    key = signing_key(secret_access_key, scope)
    return hmac.new(key, string_to_sign(amz_date, scope, request).encode("utf-8"),
                    hashlib.sha256).hexdigest()


def authorization(access_key_id: str, scope: CredentialScope, signed: Sequence[str],
                  signature_hex: str) -> str:
    return (f"{ALGORITHM} Credential={scope.credential(access_key_id)}, "
            f"SignedHeaders={';'.join(sorted(signed))}, Signature={signature_hex}")
