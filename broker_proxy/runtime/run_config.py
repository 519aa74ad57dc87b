"""Every setting of a running proxy in one typed, frozen record, and the one place that reads them.

`broker-proxy run` has three kinds of knobs: its command-line options, the mitmproxy options the
broker sets, and ``BROKER_PROXY_*`` environment variables. They used to be read wherever they were
used, so no one place listed them; here each is a field with its default, and
``build_run_config`` is the only code of `run` that reads the environment (the variable names are
contracts: scripts and containers set them). `run --print-config` prints every field, its value
and where it came from.

Parsing is done here, before anything starts: a bad value is refused with one line naming the
option, before the home is locked or a port is bound.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from broker_proxy.durations import DurationError, parse_duration
from broker_proxy.errors import BrokerError
from broker_proxy.grants.factory import STORE_ENV
from broker_proxy.home import Home
from broker_proxy.policy.model import Policy
from broker_proxy.policy.resolve_pins import PinError, ResolvePins
from broker_proxy.runtime import heap_trim, memory_trace

ENV_HOME = "BROKER_PROXY_HOME"
ENV_POLICY = "BROKER_PROXY_POLICY"
ENV_STORE = STORE_ENV
ENV_MASTER_KEY = "BROKER_PROXY_MASTER_KEY"  # secrets/master_key.py ENV_VAR: the same name
ENV_TRACEMALLOC = memory_trace.ENV_PREFIX
ENV_TRACEMALLOC_FRAMES = memory_trace.ENV_FRAMES
ENV_HEAP_TRIM = heap_trim.ENV_INTERVAL
ENV_GC_FREEZE = "BROKER_PROXY_GC_FREEZE"
ENV_DEBUG = "BROKER_PROXY_DEBUG"

DEFAULT_HOME = "~/.broker-proxy"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_METRICS = "127.0.0.1:9464"
DEFAULT_ADMIN = "127.0.0.1:8081"
# Long enough to look back at a month of grants with `grant list`/`show` (an incident is rarely
# reviewed later than that; the audit log keeps everything regardless), short enough that the
# store stays at a month of traffic: about 300,000 rows at 10,000 grants a day.
DEFAULT_GRANT_RETENTION = "30d"
HEAP_TRIM_SECONDS = heap_trim.TRIM_INTERVAL_SECONDS

Address = tuple[str, int]


class RunConfigError(BrokerError):
    """A setting of `run` that cannot be used; the message names the option."""


@dataclass(frozen=True, slots=True)
class RunConfig:
    """What `broker-proxy run` (and the `mitmdump -s` entry) runs with; built once, never changed.

    Each field says its default and where it can be set: a flag of `run`, an environment
    variable, or neither (a mitmproxy option the broker always sets that way).
    """

    # --- where state lives
    home: Home
    """--home, else $BROKER_PROXY_HOME, else ~/.broker-proxy."""
    policy_file: Path
    """--policy, else $BROKER_PROXY_POLICY, else <home>/policy.yaml."""
    store: str | None = None
    """--store, else $BROKER_PROXY_STORE, else None: the home's grants.sqlite3."""
    certs: Path | None = None
    """--certs: the CA directory; None: the home's (<home>/certs, or where a --certs put it)."""

    # --- listeners and processes
    listen: Address = ("127.0.0.1", 8080)
    """--listen: where agents connect; port 0 picks one."""
    metrics: Address | None = ("127.0.0.1", 9464)
    """--metrics: the Prometheus address; None ('off') serves none."""
    admin: Address | None = ("127.0.0.1", 8081)
    """--admin: the admin API and console; None ('off') serves none."""
    workers: int = 1
    """--workers: proxy processes sharing the listening port."""
    worker_of_group: bool = False
    """(internal flag) this process is an extra worker started by a group's first process."""

    # --- upstreams
    upstream_ca: tuple[Path, ...] = ()
    """--upstream-ca: CAs trusted for upstreams besides the system's."""
    resolve: tuple[str, ...] = ()
    """--resolve: HOST[:PORT]=IP[:PORT] pins (checked when the config is built)."""

    # --- audit
    replica_id: str | None = None
    """--replica-id; None: the id kept in <home>/replica.id."""
    audit_max_bytes: int | None = None
    """--audit-max-bytes: rotate the audit log at this size; None: never."""
    audit_checkpoint_every: float | None = 300.0
    """--audit-checkpoint-every, in seconds; None ('off'): no signed checkpoints."""
    audit_checkpoint_records: int | None = 1000
    """--audit-checkpoint-records: also one every N records; None (0): by time only."""
    audit_checkpoint_copies: tuple[Path, ...] = ()
    """--audit-checkpoint-copy: files every checkpoint is also appended to."""
    otlp_endpoint: str | None = None
    """--otlp-endpoint: the OTLP/HTTP collector the audit log is shipped to; None: off."""

    # --- connection deadlines, in seconds
    request_head_timeout: float = 30.0
    """--request-head-timeout: a whole request head within this long."""
    upstream_connect_timeout: float = 10.0
    """--upstream-connect-timeout: TCP connect, and again the upstream TLS handshake."""
    upstream_read_timeout: float = 300.0
    """--upstream-read-timeout: from the decision to the answer's headers."""
    idle_timeout: float = 600.0
    """--idle-timeout: no byte either way for this long closes a connection (tcp_timeout)."""

    # --- grants and the console
    grant_retention: timedelta | None = timedelta(days=30)
    """--grant-retention: ended grants are purged this long after; None ('off'): kept."""
    console_session_ttl: timedelta = timedelta(hours=8)
    """--console-session-ttl: how long a console sign-in lasts."""

    # --- mitmproxy options the broker sets (not settable: each is a security choice)
    connection_strategy: str = "lazy"
    """Dial upstream only after the request was decided."""
    validate_inbound_headers: bool = True
    """mitmproxy refuses malformed request headers before any hook."""
    body_size_limit: str = "10m"
    """Bodies larger than this are refused (mitmproxy's body_size_limit)."""
    ssl_insecure: bool = False
    """Upstream certificates are always verified."""
    termlog_verbosity: str = "warn"
    """mitmproxy's own log: warnings and errors only (no per-request lines)."""

    # --- environment-only knobs
    master_key_in_env: bool = False
    """$BROKER_PROXY_MASTER_KEY is set; the vault reads the key itself, it is never copied here."""
    tracemalloc_prefix: str | None = None
    """$BROKER_PROXY_TRACEMALLOC: SIGUSR2 writes memory reports next to this prefix."""
    tracemalloc_frames: int = 0
    """$BROKER_PROXY_TRACEMALLOC_FRAMES: > 0 also traces allocations with this many frames."""
    heap_trim_seconds: float = HEAP_TRIM_SECONDS
    """$BROKER_PROXY_HEAP_TRIM_SECONDS: give freed C heap back this often; 0: never."""
    gc_freeze: bool = True
    """$BROKER_PROXY_GC_FREEZE (0 turns it off): freeze start-up objects once listening."""
    debug: bool = False
    """$BROKER_PROXY_DEBUG: an internal error shows its traceback."""

    sources: Mapping[str, str] = field(default_factory=dict, compare=False)
    """Where each field came from: default, flag, env or policy (`run --print-config`)."""

    def describe(self) -> list[tuple[str, str, str]]:
        """(field, value as printed, source) for every field; no secret, no URL password."""
        rows = []
        for item in dataclasses.fields(self):
            if item.name == "sources":
                continue
            value = getattr(self, item.name)
            rows.append((item.name, _shown(item.name, value),
                         self.sources.get(item.name, "default")))
        return rows


def policy_rows(policy: Policy) -> list[tuple[str, str, str]]:
    """The run settings a policy holds (read again at each reload), as `describe` rows."""
    pins = ",".join(f"{host}{f':{port}' if port else ''}={address}{f':{to}' if to else ''}"
                    for (host, port), (address, to) in policy.resolve.items())
    webhook = policy.approval_webhook
    return [("network.resolve", pins or "-", "policy"),
            ("approval_timeout", _shown("approval_timeout", policy.approval_timeout), "policy"),
            ("approval_webhook", _without_password(webhook) if webhook else "off", "policy")]


def _shown(name: str, value: object) -> str:
    if value is None:
        return "off" if name in _OFF_FIELDS else "-"
    if isinstance(value, timedelta):
        return _seconds_text(value.total_seconds())
    if isinstance(value, float) and name in _SECONDS_FIELDS:
        return _seconds_text(value)
    if isinstance(value, Home):
        return str(value.root)
    if isinstance(value, tuple) and name in ("listen", "metrics", "admin"):
        return f"{value[0]}:{value[1]}"
    if isinstance(value, tuple):
        return ",".join(str(part) for part in value) or "-"
    if isinstance(value, str) and "://" in value:
        return _without_password(value)
    return str(value)


def _seconds_text(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds.is_integer() else f"{seconds:g}s"


_SECONDS_FIELDS = {"audit_checkpoint_every", "request_head_timeout", "upstream_connect_timeout",
                   "upstream_read_timeout", "idle_timeout", "heap_trim_seconds"}
_OFF_FIELDS = {"metrics", "admin", "audit_max_bytes", "audit_checkpoint_every",
               "audit_checkpoint_records", "otlp_endpoint", "grant_retention",
               "tracemalloc_prefix"}


def _without_password(url: str) -> str:
    """A store or collector URL as printed: a password in it becomes ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:***@" if parts.username else ":***@"
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=user + host).geturl()


class _Picker:
    """Takes each value from its flag, else its variable, else its default, noting which."""

    def __init__(self, args: argparse.Namespace, environ: Mapping[str, str]) -> None:
        self.args, self.environ = args, environ
        self.sources: dict[str, str] = {}

    def text(self, name: str, default: str | None, *, env: str | None = None,
             field: str | None = None) -> str | None:
        """The flag ``name`` (its argparse dest), else ``env``, else ``default``."""
        given = getattr(self.args, name, None)
        if given is not None:
            self.sources[field or name] = "flag"
            return str(given)
        if env is not None and self.environ.get(env):
            self.sources[field or name] = "env"
            return self.environ[env]
        return default

    def many(self, name: str, field: str | None = None) -> tuple[str, ...]:
        given = getattr(self.args, name, None) or []
        if given:
            self.sources[field or name] = "flag"
        return tuple(given)


def home_setting(explicit: str | None, environ: Mapping[str, str]) -> Home:
    """--home, else $BROKER_PROXY_HOME, else ~/.broker-proxy (every command's rule)."""
    return Home.resolve(explicit or environ.get(ENV_HOME) or DEFAULT_HOME)


def policy_setting(home: Home, explicit: str | None, environ: Mapping[str, str]) -> Path:
    """--policy, else $BROKER_PROXY_POLICY, else <home>/policy.yaml (every command's rule)."""
    raw = explicit or environ.get(ENV_POLICY)
    return Path(raw).expanduser() if raw else home.policy


def store_setting(explicit: str | None, environ: Mapping[str, str]) -> str | None:
    """--store, else $BROKER_PROXY_STORE, else None: the home's SQLite file.

    The environment is the better place for a Redis URL with a password: argv is visible to
    every user of the machine in `ps`.
    """
    return explicit or environ.get(ENV_STORE) or None


def debug_setting(environ: Mapping[str, str]) -> bool:
    """$BROKER_PROXY_DEBUG: an internal error of any command shows its traceback."""
    return bool(environ.get(ENV_DEBUG))


def build_run_config(args: argparse.Namespace, environ: Mapping[str, str]) -> RunConfig:
    """The config of `run` from its parsed flags and the environment; RunConfigError if unusable."""
    pick = _Picker(args, environ)
    home = home_setting(pick.text("home", None, env=ENV_HOME), {})
    policy = pick.text("policy", None, env=ENV_POLICY, field="policy_file")
    workers = int(pick.text("workers", "1") or 1)
    if workers < 1:
        raise RunConfigError(f"--workers must be at least 1, got {workers}")
    resolve = pick.many("resolve")
    try:
        ResolvePins.parse(list(resolve))
    except PinError as error:
        raise RunConfigError(str(error)) from None
    certs = pick.text("certs", None)
    if getattr(args, "worker_of_group", False):
        pick.sources["worker_of_group"] = "flag"
    return RunConfig(
        home=home,
        policy_file=policy_setting(home, policy, {}),
        store=pick.text("store", None, env=ENV_STORE),
        certs=Path(certs) if certs else None,
        listen=_address(pick.text("listen", DEFAULT_LISTEN), "--listen"),
        metrics=_optional_address(pick.text("metrics", DEFAULT_METRICS), "--metrics"),
        admin=_optional_address(pick.text("admin", DEFAULT_ADMIN), "--admin"),
        workers=workers, worker_of_group=bool(getattr(args, "worker_of_group", False)),
        upstream_ca=tuple(Path(pem) for pem in pick.many("upstream_ca")),
        resolve=resolve,
        **_audit_fields(pick), **_deadline_fields(pick), **_lifetime_fields(pick),
        **_environment_fields(pick),
        sources=MappingProxyType(pick.sources),
    )


def _audit_fields(pick: _Picker) -> dict[str, Any]:
    every = pick.text("audit_checkpoint_every", "5m") or "5m"
    records = int(pick.text("audit_checkpoint_records", "1000") or 0)
    max_bytes = pick.text("audit_max_bytes", None)
    return {
        "replica_id": pick.text("replica_id", None),
        "audit_max_bytes": int(max_bytes) if max_bytes else None,
        "audit_checkpoint_every": None if every == "off"
        else _seconds(every, "--audit-checkpoint-every"),
        "audit_checkpoint_records": records or None,
        "audit_checkpoint_copies": tuple(Path(c) for c in pick.many("audit_checkpoint_copy",
                                                                "audit_checkpoint_copies")),
        "otlp_endpoint": pick.text("otlp_endpoint", None),
    }


def _deadline_fields(pick: _Picker) -> dict[str, Any]:
    defaults = {"request_head_timeout": "30s", "upstream_connect_timeout": "10s",
                "upstream_read_timeout": "5m", "idle_timeout": "10m"}
    return {name: _seconds(pick.text(name, default) or default,
                           "--" + name.replace("_", "-"))
            for name, default in defaults.items()}


def _lifetime_fields(pick: _Picker) -> dict[str, Any]:
    retention = pick.text("grant_retention", DEFAULT_GRANT_RETENTION) or DEFAULT_GRANT_RETENTION
    ttl = pick.text("console_session_ttl", "8h") or "8h"
    try:
        session_ttl = parse_duration(ttl)
    except DurationError as error:
        raise RunConfigError(f"--console-session-ttl: {error}") from None
    return {"grant_retention": grant_retention(retention), "console_session_ttl": session_ttl}


def _environment_fields(pick: _Picker) -> dict[str, Any]:
    environ = pick.environ
    for name, variable in (("master_key_in_env", ENV_MASTER_KEY),
                           ("tracemalloc_prefix", ENV_TRACEMALLOC),
                           ("tracemalloc_frames", ENV_TRACEMALLOC_FRAMES),
                           ("heap_trim_seconds", ENV_HEAP_TRIM), ("gc_freeze", ENV_GC_FREEZE),
                           ("debug", ENV_DEBUG)):
        if variable in environ:
            pick.sources[name] = "env"
    frames = environ.get(ENV_TRACEMALLOC_FRAMES, "0").strip()
    return {
        # Only whether it is set: the vault reads the value itself, it is never copied here.
        "master_key_in_env": bool(environ.get(ENV_MASTER_KEY)),
        "tracemalloc_prefix": environ.get(ENV_TRACEMALLOC) or None,
        "tracemalloc_frames": int(frames) if frames.isdigit() else 0,
        "heap_trim_seconds": heap_trim_seconds(environ),
        "gc_freeze": gc_freeze_enabled(environ),
        "debug": debug_setting(environ),
    }


def heap_trim_seconds(environ: Mapping[str, str]) -> float:
    """$BROKER_PROXY_HEAP_TRIM_SECONDS; not a number in [0, 1 day): the default."""
    try:
        interval = float(environ.get(ENV_HEAP_TRIM, HEAP_TRIM_SECONDS))
    except ValueError:
        return HEAP_TRIM_SECONDS
    return interval if 0 <= interval < 86_400 else HEAP_TRIM_SECONDS  # also not nan


def gc_freeze_enabled(environ: Mapping[str, str]) -> bool:
    """$BROKER_PROXY_GC_FREEZE=0 leaves the collector as it is (for comparisons)."""
    return environ.get(ENV_GC_FREEZE, "1") != "0"


def grant_retention(text: str) -> timedelta | None:
    """`--grant-retention`: a positive duration, or None for 'off'."""
    if text == "off":
        return None
    try:
        retention = parse_duration(text)
    except DurationError as error:
        raise RunConfigError(f"--grant-retention: {error}") from None
    if retention <= timedelta(0):
        raise RunConfigError(f"--grant-retention must be positive or 'off', got {text!r}")
    return retention


def _seconds(text: str, option: str) -> float:
    try:
        seconds = parse_duration(text).total_seconds()
    except DurationError as error:
        raise RunConfigError(f"{option}: {error}") from None
    if seconds <= 0:
        raise RunConfigError(f"{option} must be positive, got {text!r}")
    return seconds


def parse_address(text: str, option: str) -> Address:
    """HOST:PORT (a bracketed IPv6 host too); RunConfigError naming the option otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536 or not host:
        raise RunConfigError(f"{option} must be HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _address(text: str | None, option: str) -> Address:
    return parse_address(text or "", option)


def _optional_address(text: str | None, option: str) -> Address | None:
    return None if text == "off" else _address(text, option)
