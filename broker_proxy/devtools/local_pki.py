"""A throwaway CA and server certificates, for local HTTPS upstreams in the demo and the tests.

The proxy verifies upstreams (a placeholder is swapped only over verified TLS), so a local
upstream needs a certificate the proxy can be told to trust with `--upstream-ca`. Validity is one
day and starts an hour in the past to tolerate clock skew between processes and containers.
The extensions satisfy Python's VERIFY_X509_STRICT (the 3.13 default) and mitmproxy's checks.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = timedelta(days=1)
BACKDATE = timedelta(hours=1)


class LocalPkiError(ValueError):
    """Bad input to the local PKI (no names, an unparsable address, a CA that is not a CA)."""


@dataclass(frozen=True, slots=True)
class LocalPki:
    ca_cert_path: Path
    cert_path: Path
    key_path: Path


def make_ca(common_name: str) -> tuple[bytes, bytes]:
    """A self-signed EC P-256 CA: (certificate PEM, private key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before = datetime.now(UTC) - BACKDATE
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALIDITY)
        # path_length=0: this CA signs leaves only, never another CA.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_server_cert(
    ca_cert_pem: bytes,
    ca_key_pem: bytes,
    hostnames: Sequence[str],
    ip_addresses: Sequence[str] = (),
) -> tuple[bytes, bytes]:
    """A serverAuth leaf for the names and addresses, signed by the CA: (cert PEM, key PEM)."""
    if not hostnames and not ip_addresses:
        raise LocalPkiError("a server certificate needs at least one hostname or IP address")
    try:
        addresses = [ipaddress.ip_address(address) for address in ip_addresses]
    except ValueError as exc:
        raise LocalPkiError(str(exc)) from None
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise LocalPkiError("the CA key must be an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    subject_cn = hostnames[0] if hostnames else str(addresses[0])
    sans: list[x509.GeneralName] = [x509.DNSName(host) for host in hostnames]
    sans += [x509.IPAddress(address) for address in addresses]
    not_before = datetime.now(UTC) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_client_cert(ca_cert_pem: bytes, ca_key_pem: bytes,
                     common_name: str) -> tuple[bytes, bytes]:
    """A clientAuth leaf signed by the CA, for mTLS upstreams: (cert PEM, key PEM)."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise LocalPkiError("the CA key must be an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = datetime.now(UTC) - BACKDATE
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def write_pki(
    directory: Path, hostnames: Sequence[str], ip_addresses: Sequence[str] = ()
) -> LocalPki:
    """Make a CA and one server certificate under `directory`: ca.pem, server.pem, server-key.pem.

    The CA's private key is not written: nothing after this needs to sign with it.
    """
    directory = Path(directory)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca_cert, ca_key = make_ca("broker-proxy local test CA")
    cert, key = make_server_cert(ca_cert, ca_key, hostnames, ip_addresses)
    pki = LocalPki(
        ca_cert_path=directory / "ca.pem",
        cert_path=directory / "server.pem",
        key_path=directory / "server-key.pem",
    )
    _write(pki.ca_cert_path, ca_cert, 0o644)
    _write(pki.cert_path, cert, 0o644)
    _write(pki.key_path, key, 0o600)
    return pki


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, mode: int) -> None:
    # Create with the final mode so a private key is never readable by others, even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    with os.fdopen(fd, "wb") as handle:
        os.fchmod(fd, mode)  # an existing file keeps its old mode through O_CREAT
        handle.write(data)
