"""The peers `peers.py` measures the broker against, each started as its own process.

mitmdump as the common way to build an injecting proxy (bare, and with the minimal `-s`
injector), and Squid with ssl-bump and a header rewrite: the fast C proxy a team could put in
front of its agents instead, configured here as Debian's `squid-openssl` would be. Each started
peer is a `Peer`: where to send traffic, which CA the client must trust, and the process whose
CPU and memory count (with its direct children: Squid's certificate helpers).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.loadgen import ProxySpec
from broker_proxy.devtools.local_pki import make_ca
from broker_proxy.runtime.local_ports import free_port, wait_for_port

HERE = Path(__file__).resolve().parent
SQUID = "/usr/sbin/squid"
CERTGEN = "/usr/lib/squid/security_file_certgen"


@dataclass(frozen=True)
class Peer:
    name: str
    proxy: ProxySpec | None  # None: the client talks to the upstream itself
    ca_file: str  # what the client trusts: the proxy's CA, or the upstream's
    pid: int | None


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def mitmdump(name: str, root: Path, upstream_ca: Path, env: dict[str, str],
             script: Path | None = None) -> Iterator[Peer]:
    """`mitmdump -q`, trusting the upstream's CA; with `script`, `-s script` too."""
    port = free_port()
    confdir = root / f"mitmdump-{port}"
    command = [str(Path(sys.executable).parent / "mitmdump"), "-q", "--listen-host",
               "127.0.0.1", "--listen-port", str(port), "--set", f"confdir={confdir}",
               "--set", f"ssl_verify_upstream_trusted_ca={upstream_ca}"]
    if script is not None:
        command += ["-s", str(script)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, process)
        yield Peer(name, ProxySpec("127.0.0.1", port), str(confdir / "mitmproxy-ca-cert.pem"),
                   process.pid)
    finally:
        _stop(process)


def squid_missing() -> str | None:
    """Why Squid cannot be a peer here, or None when it can (ssl-bump needs an OpenSSL build)."""
    if not (os.access(SQUID, os.X_OK) and os.access(CERTGEN, os.X_OK)):
        return "not installed (Debian: apt-get install squid-openssl)"
    version = subprocess.run([SQUID, "-v"], capture_output=True, text=True).stdout
    if "--with-openssl" not in version:
        return "this Squid is built without OpenSSL: no ssl-bump (Debian: squid-openssl)"
    return None


def squid_version() -> str:
    first = subprocess.run([SQUID, "-v"], capture_output=True, text=True).stdout.splitlines()
    return first[0].removeprefix("Squid Cache: ") if first else "unknown"


# Bump every tunnel (peek at the client's SNI first, then mint a certificate for it), replace
# the client's Authorization header with the secret, keep nothing: no cache, no access log.
_SQUID_CONF = """\
http_port 127.0.0.1:{port} ssl-bump generate-host-certificates=on \
dynamic_cert_mem_cache_size=4MB tls-cert={dir}/bump-ca.pem tls-key={dir}/bump-ca.key
sslcrtd_program {certgen} -s {dir}/ssl_db -M 4MB
sslcrtd_children 5 startup=1 idle=1
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={upstream_ca}
request_header_access Authorization deny all
request_header_add Authorization "Bearer {secret}" all
http_access allow localhost
http_access deny all
hosts_file {dir}/hosts
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {dir}/cache.log
pid_filename {dir}/squid.pid
coredump_dir {dir}
pinger_enable off
shutdown_lifetime 0 seconds
"""


@contextmanager
def squid(root: Path, upstream_ca: Path, secret: str) -> Iterator[Peer]:
    """Squid (`squid -N`: one process, no kids) bumping TLS and rewriting Authorization."""
    folder = root / "squid"
    folder.mkdir()
    ca_cert, ca_key = make_ca("peers.py Squid bump CA")
    (folder / "bump-ca.pem").write_bytes(ca_cert)
    (folder / "bump-ca.key").write_bytes(ca_key)
    shutil.copy(upstream_ca, folder / "upstream-ca.pem")
    (folder / "hosts").write_text("127.0.0.1 localhost\n")  # no ::1 try before 127.0.0.1
    port = free_port()
    config = _SQUID_CONF.format(port=port, dir=folder, certgen=CERTGEN, secret=secret,
                                upstream_ca=folder / "upstream-ca.pem")
    if os.geteuid() == 0:
        # Squid started as root runs as cache_effective_user: it must read and write its folder.
        config += "cache_effective_user proxy\n"
    (folder / "squid.conf").write_text(config)
    subprocess.run([CERTGEN, "-c", "-s", str(folder / "ssl_db"), "-M", "4MB"], check=True,
                   capture_output=True)
    if os.geteuid() == 0:
        user = pwd.getpwnam("proxy")
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, user.pw_uid, user.pw_gid)
    process = subprocess.Popen([SQUID, "-N", "-f", str(folder / "squid.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            wait_for_port(port, process)
        except RuntimeError as error:
            log = (folder / "cache.log").read_text(errors="replace").strip().splitlines()
            raise RuntimeError(f"squid: {error}: {' | '.join(log[-5:])}") from None
        yield Peer("squid", ProxySpec("127.0.0.1", port), str(folder / "bump-ca.pem"),
                   process.pid)
    finally:
        _stop(process)
