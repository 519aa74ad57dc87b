"""mTLS: present a policy's client certificate when connecting upstream to its destinations.

A ``client_cert`` secret's value is a private key (PEM, from any backend); its ``client_cert``
field says where the certificate PEM is (``file:PATH`` relative to the policy's directory, or
``env:VAR``). The certificate is presented on an upstream connection only when

- a request on the same client connection was allowed to that (host, port) by the broker,
- the grant that request used is still active and holds the secret, and
- one of the secret's destinations covers https://host:port.

The handshake authenticates the whole connection, so method and path rules of the destination
cannot be applied per request here; keep mTLS destinations to hosts the grant may use wholly.
The key is loaded into the pyOpenSSL connection in memory, never written to disk, and a durable
audit record of its use is written first (docs/ARCHITECTURE.md, invariant 5); if it cannot be,
nothing is presented.

mitmproxy's TlsConfig creates ``tls_start.ssl_conn`` in its own ``tls_start_server``; the
broker's addon is added after it, so by the time this runs the connection exists and only the
certificate and key are added to it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Coroutine
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from mitmproxy import connection, tls
from OpenSSL import crypto

from broker_proxy.audit.log import AuditError
from broker_proxy.decision.broker import Broker
from broker_proxy.policy.destinations import HostError, canonical_host
from broker_proxy.policy.model import SecretPolicy
from broker_proxy.secrets.backends import SecretUnavailable

log = logging.getLogger("broker_proxy.client_certs")


class Upstream(NamedTuple):
    grant_id: str
    host: str
    port: int


class ClientCertError(Exception):
    """The certificate or key of a client_cert secret cannot be used."""


class ClientCerts:
    def __init__(self, broker: Broker, decisions: Executor | None = None) -> None:
        self.broker = broker
        self._decisions = decisions  # None: asyncio's default executor
        # client connection -> (host, port) -> id of the grant a request there was allowed for.
        self._grants: WeakKeyDictionary[connection.Client, dict[tuple[str, int], str]] = (
            WeakKeyDictionary())

    def request_allowed(self, client: connection.Client, host: str, port: int,
                        grant_id: str) -> None:
        self._grants.setdefault(client, {})[(host.lower(), port)] = grant_id

    def tls_start_server(self, tls_start: tls.TlsData) -> Coroutine[Any, Any, None] | None:
        # A raise here or off the loop presents no certificate (the upstream refuses, nothing
        # leaks), logged and recorded by fail_closed.py.
        wanted = self.wanted(tls_start)
        if wanted is None:
            return None
        # The grant store, the key's backend and the audit fsync may all block: off the loop.
        return self._present_off_loop(tls_start, wanted)

    async def _present_off_loop(self, tls_start: tls.TlsData, wanted: Upstream) -> None:
        await asyncio.get_running_loop().run_in_executor(
            self._decisions, self.present, tls_start, wanted)

    def wanted(self, tls_start: tls.TlsData) -> Upstream | None:
        """Whether this handshake may need a certificate: memory only, cheap on the loop."""
        server = tls_start.conn
        if tls_start.ssl_conn is None or not isinstance(server, connection.Server):
            return None
        if server.address is None:
            return None
        try:
            host = canonical_host(server.sni or server.address[0])
        except HostError:
            return None
        port = server.address[1]
        grant_id = self._grants.get(tls_start.context.client, {}).get((host, port))
        return None if grant_id is None else Upstream(grant_id, host, port)

    def present(self, tls_start: tls.TlsData, upstream: Upstream) -> None:
        """Read the grant, resolve the key, write the durable audit record, then present.

        Blocking (store, keyring or command, fsync): the addon runs it on a worker thread.
        """
        assert tls_start.ssl_conn is not None
        grant_id, host, port = upstream
        secret = self._secret_for(grant_id, host, port)
        if secret is None:
            return
        try:
            cert, key = self._material(secret)
            self.broker.audit.append("client_cert", durable=True, decision="allow",
                                     reason="client_cert", grant=grant_id, secrets=[secret.name],
                                     scheme="https", host=host, port=port)
        except (ClientCertError, SecretUnavailable) as error:
            log.error("client certificate %s not presented: %s", secret.name, error)
            return
        except AuditError:
            self.broker.metrics.audit_write_errors.inc()
            log.error("client certificate %s not presented: audit log unavailable", secret.name)
            return
        tls_start.ssl_conn.use_certificate(cert)
        tls_start.ssl_conn.use_privatekey(key)

    def _secret_for(self, grant_id: str, host: str, port: int) -> SecretPolicy | None:
        grant = self.broker.grants.get(grant_id)
        if grant is None or grant.state_at(self.broker.clock()) != "active":
            return None
        policy = self.broker.policy
        for name in sorted(grant.secrets):
            secret = policy.policy.secrets.get(name)
            if secret is None or secret.client_cert is None:
                continue
            if name in policy.index.secrets_covering("https", host, port):
                return secret
        return None

    def _material(self, secret: SecretPolicy) -> tuple[crypto.X509, crypto.PKey]:
        assert secret.client_cert is not None
        kind, _, argument = secret.client_cert.partition(":")
        if kind == "env":
            text = os.environ.get(argument)
            if not text:
                raise ClientCertError(f"environment variable {argument} is not set")
            cert_pem = text.encode()
        else:
            path = Path(argument).expanduser()
            if not path.is_absolute():
                path = Path(self.broker.policy.policy.source).parent / path
            try:
                cert_pem = path.read_bytes()
            except OSError as error:
                raise ClientCertError(f"cannot read {path}: {error.strerror}") from None
        key_value = self.broker.secrets.stored_value(secret)
        try:
            certificate = x509.load_pem_x509_certificate(cert_pem)
            private_key = load_pem_private_key(key_value.reveal().encode(), password=None)
        except (ValueError, TypeError):
            # Not the parser's message: it may quote key bytes.
            raise ClientCertError("the certificate or key is not valid PEM") from None
        return (crypto.X509.from_cryptography(certificate),
                crypto.PKey.from_cryptography_key(private_key))  # type: ignore[arg-type]
