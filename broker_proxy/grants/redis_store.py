"""The grant store in Redis, shared by every broker replica and CLI that names the same URL.

Each verb that judges a grant's state and changes it is one Lua script, so Redis runs the
check and the write as one step with nothing in between: `max_uses` holds across replicas
exactly as it holds across processes with SQLite. The judgement itself is `Grant.state_at`
written again in Lua (`_STATE_AT`); the shared contract tests run both stores through the same
cases so the two cannot drift apart unnoticed.

The grant's own `expires_at` is the only expiry that decides anything: it is compared with the
caller's clock inside the script. Redis key expiry only removes a grant's hash a while after it
ran out, as clean-up.

Nothing is cached: every request reads the grant, so a revocation or approval written through
any replica is seen by every other one on its next request.

Every Redis failure (refused, timed out, script error) becomes `GrantStoreError`, which the
broker answers with 503: fail closed. Timeouts are short so a request never waits long for a
store that is gone; redis-py reconnects on the next command once Redis is back.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.store import (
    GrantNotFound,
    GrantStateError,
    GrantStoreError,
    ReserveResult,
    authenticate_token,
)

CONNECT_TIMEOUT = 0.5  # seconds to open a connection
COMMAND_TIMEOUT = 0.5  # seconds to wait for one reply
# How long a grant's hash outlives its expiry before Redis deletes it: long enough for
# `grant list` and incident review to see what ran out, short enough not to pile up.
RETENTION = timedelta(days=1)

# One hash tag for every key, so the multi-key scripts also run on a Redis Cluster.
_PREFIX = "{broker-proxy}"
_INDEX_KEY = f"{_PREFIX}:grants"  # sorted set: score created_at (µs), member grant id

# Lua numbers are doubles: microseconds since 1970 stay exact until about the year 2255.
_STATE_AT = """
local function state_at(fields, now)
  local status = fields[1]
  if status == 'revoked' or status == 'denied' then return status end
  if now >= tonumber(fields[2]) then return 'expired' end
  if status == 'pending' then return 'pending' end
  if status ~= 'active' then error('grant has an unknown status') end
  if fields[3] and tonumber(fields[4]) >= tonumber(fields[3]) then return 'used_up' end
  return 'active'
end
local function read_state(key, now)
  local fields = redis.call('HMGET', key, 'status', 'expires_at', 'max_uses', 'uses')
  if not fields[1] then return nil end
  return state_at(fields, now)
end
"""

# KEYS: grant, index. ARGV: id, created_at, expires_at, retention (ms), field/value pairs...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires_ms = math.floor(tonumber(ARGV[3]) / 1000)
redis.call('PEXPIREAT', KEYS[1], math.max(expires_ms, now_ms) + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""

# KEYS: grant. ARGV: now. The check and the increment are one step: no other client runs
# between them, so two replicas can never both spend the last use.
_RESERVE = _STATE_AT + """
local state = read_state(KEYS[1], tonumber(ARGV[1]))
if not state then return 'not_found' end
if state ~= 'active' then return state end
redis.call('HINCRBY', KEYS[1], 'uses', 1)
return 'reserved'
"""

# KEYS: grant. ARGV: now, action, by. Same rules as SqliteGrantStore: approve/deny only a
# pending grant; revoke one that is active, pending or ran out (so `exec` can always close it).
_TRANSITION = _STATE_AT + """
local state = read_state(KEYS[1], tonumber(ARGV[1]))
if not state then return {'not_found'} end
local action = ARGV[2]
if action == 'revoke' then
  if state == 'revoked' or state == 'denied' then return {'refused', state} end
  redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[1])
elseif state ~= 'pending' then
  return {'refused', state}
elseif action == 'approve' then
  redis.call('HSET', KEYS[1], 'status', 'active', 'approved_by', ARGV[3], 'approved_at', ARGV[1])
elseif action == 'deny' then
  redis.call('HSET', KEYS[1], 'status', 'denied', 'approved_by', ARGV[3], 'approved_at', ARGV[1])
else
  error('unknown grant action')
end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'ok')
return all
"""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_URL_FORMS = "redis://[:PASSWORD@]HOST:PORT/DB or rediss://[:PASSWORD@]HOST:PORT/DB"


class RedisGrantStore:
    """A `GrantStore` in one Redis database; thread-safe (redis-py pools its connections)."""

    # Every call is a network round trip (up to the 0.5 s timeout): callers on an event loop
    # should make them from a worker thread.
    remote = True

    def __init__(self, url: str) -> None:
        options, self._where = _parse_url(url)
        self._closed = False
        self._client = redis.Redis(
            **options,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            # One retry, and only when the connection broke (a pooled connection that died
            # while Redis restarted): a timeout is not retried, so a slow Redis costs one
            # timeout, not several. A retried reserve whose first reply was lost may count one
            # use that was not spent: that errs on the side of fewer uses, never more.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
            health_check_interval=0,
        )
        self._create = self._client.register_script(_CREATE)
        self._reserve = self._client.register_script(_RESERVE)
        self._transition_script = self._client.register_script(_TRANSITION)
        try:
            # Refuse to start against a store that is not there or refuses us: a typo in the
            # URL should stop `run` at once, not turn every request into a 503.
            self._client.ping()
        except redis.RedisError as exc:
            self._client.close()
            raise self._unusable(exc) from exc

    # -- the GrantStore verbs -------------------------------------------------------------

    def create(self, grant: Grant) -> None:
        _check_storable(grant)
        pairs: list[Any] = []
        for name, value in _fields_from_grant(grant).items():
            pairs += [name, value]
        keep_ms = RETENTION // timedelta(milliseconds=1)
        with self._talking():
            created = self._create(
                keys=[_grant_key(grant.id), _INDEX_KEY],
                args=[grant.id, _to_micros(grant.created_at), _to_micros(grant.expires_at),
                      keep_ms, *pairs],
            )
        if not created:
            raise GrantStoreError(f"grant {grant.id} already exists in {self._where}")

    def get(self, grant_id: str) -> Grant | None:
        with self._talking():
            fields = self._client.hgetall(_grant_key(grant_id))
        return _grant_from_fields(grant_id, fields) if fields else None

    def authenticate(self, token: str) -> Grant | None:
        return authenticate_token(token, self.get)

    def list(
        self, *, include_inactive: bool = True, now: datetime | None = None
    ) -> list[Grant]:
        with self._talking():
            ids = [raw.decode() for raw in self._client.zrange(_INDEX_KEY, 0, -1)]
            pipe = self._client.pipeline(transaction=False)
            for grant_id in ids:
                pipe.hgetall(_grant_key(grant_id))
            rows = pipe.execute()
            # Hashes Redis expired (RETENTION after expiry) leave their id in the index.
            gone = [gid for gid, fields in zip(ids, rows, strict=True) if not fields]
            if gone:
                self._client.zrem(_INDEX_KEY, *gone)
        grants = [
            _grant_from_fields(gid, fields) for gid, fields in zip(ids, rows, strict=True) if fields
        ]
        if include_inactive:
            return grants
        moment = now if now is not None else datetime.now(UTC)
        return [g for g in grants if g.state_at(moment) in ("active", "pending")]

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True) -> ReserveResult:
        # `wait` is ignored: a remote store is only ever used off the event loop.
        with self._talking():
            outcome = self._reserve(keys=[_grant_key(grant_id)], args=[_to_micros(now)])
        try:
            # The script answers "reserved" or the state that refused the use, which are
            # exactly ReserveResult's values.
            return ReserveResult(outcome.decode())
        except (AttributeError, ValueError):
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer") from None

    def approve(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "approve", by)

    def deny(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "deny", by)

    def revoke(self, grant_id: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "revoke", "")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> RedisGrantStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals ------------------------------------------------------------------------

    def _transition(self, grant_id: str, now: datetime, action: str, by: str) -> Grant:
        with self._talking():
            reply = self._transition_script(
                keys=[_grant_key(grant_id)], args=[_to_micros(now), action, by]
            )
        head = reply[0].decode()
        if head == "not_found":
            raise GrantNotFound(grant_id)
        if head == "refused":
            raise GrantStateError(grant_id, reply[1].decode(), action)
        flat = reply[1:]
        return _grant_from_fields(grant_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Every Redis failure inside the block becomes GrantStoreError (fail closed)."""
        if self._closed:
            raise GrantStoreError(f"grant store {self._where} is closed")
        try:
            yield
        except redis.RedisError as exc:
            raise self._unusable(exc) from exc

    def _unusable(self, exc: BaseException) -> GrantStoreError:
        # redis-py messages name the failure and the address ("Error 111 connecting to
        # host:port. Connection refused.", "Timeout reading from socket"), never a password
        # or a stored value; one line so the CLI and the log show it whole.
        detail = " ".join(str(exc).split()) or type(exc).__name__
        return GrantStoreError(f"grant store {self._where} is unavailable: {detail}")


def _parse_url(url: str) -> tuple[dict[str, Any], str]:
    """redis-py keyword arguments for the URL, and the URL without credentials for messages.

    Parsed here rather than by redis-py's from_url, which turns any query parameter into a
    client option: a URL must not be able to switch off TLS certificate checks.
    """
    try:
        parts = urlsplit(url)
        port = parts.port or 6379
    except ValueError:
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}") from None
    if parts.scheme not in ("redis", "rediss") or not parts.hostname:
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}")
    db_text = parts.path.strip("/") or "0"
    if not db_text.isdigit():
        raise GrantStoreError(f"grant store URL must be {_URL_FORMS}")
    query = parse_qs(parts.query)
    unknown = sorted(set(query) - {"ssl_ca_certs"})
    if unknown or (query and parts.scheme != "rediss"):
        raise GrantStoreError("grant store URL may only carry ssl_ca_certs, and only with rediss")
    host = parts.hostname
    shown_host = f"[{host}]" if ":" in host else host
    where = f"{parts.scheme}://{shown_host}:{port}/{int(db_text)}"
    options: dict[str, Any] = {"host": host, "port": port, "db": int(db_text)}
    if parts.username:
        options["username"] = unquote(parts.username)
    if parts.password:
        options["password"] = unquote(parts.password)
    if parts.scheme == "rediss":
        # Verified TLS only: the store decides who may use which secret.
        options |= {"ssl": True, "ssl_cert_reqs": ssl.CERT_REQUIRED, "ssl_check_hostname": True}
        if "ssl_ca_certs" in query:
            options["ssl_ca_certs"] = query["ssl_ca_certs"][0]
    return options, where


def _grant_key(grant_id: str) -> str:
    return f"{_PREFIX}:grant:{grant_id}"


def _check_storable(grant: Grant) -> None:
    # The same limits the SQLite schema's CHECK constraints enforce.
    if grant.max_uses is not None and grant.max_uses < 1:
        raise ValueError(f"grant {grant.id} cannot be stored: max_uses must be at least 1")
    if grant.uses < 0:
        raise ValueError(f"grant {grant.id} cannot be stored: uses must not be negative")


def _to_micros(moment: datetime) -> int:
    if moment.utcoffset() is None:
        raise ValueError("grant store times must be timezone-aware")
    return (moment - _EPOCH) // _MICROSECOND


def _fields_from_grant(grant: Grant) -> dict[str, str | int | bytes]:
    """The hash of one grant; a None is an absent field (Lua's HMGET then reads false)."""
    fields: dict[str, str | int | bytes | None] = {
        "id": grant.id,
        "agent": grant.agent,
        "task": grant.task,
        "secrets": json.dumps(list(grant.secrets)),
        "created_at": _to_micros(grant.created_at),
        "expires_at": _to_micros(grant.expires_at),
        "max_uses": grant.max_uses,
        "uses": grant.uses,
        "status": str(grant.status),
        "approved_by": grant.approved_by,
        "approved_at": None if grant.approved_at is None else _to_micros(grant.approved_at),
        "revoked_at": None if grant.revoked_at is None else _to_micros(grant.revoked_at),
        "token_hash": grant.token_hash,
        # Absent for grants without per-grant placeholders (and for grants stored before).
        "placeholders": json.dumps(dict(grant.placeholders), sort_keys=True)
        if grant.placeholders else None,
    }
    return {name: value for name, value in fields.items() if value is not None}


def _grant_from_fields(grant_id: str, raw: dict[bytes, bytes]) -> Grant:
    fields = {name.decode(): value for name, value in raw.items()}

    def text(name: str) -> str | None:
        value = fields.get(name)
        return None if value is None else value.decode()

    def moment(name: str) -> datetime | None:
        value = fields.get(name)
        return None if value is None else _EPOCH + timedelta(microseconds=int(value))

    try:
        created_at, expires_at = moment("created_at"), moment("expires_at")
        if created_at is None or expires_at is None or "token_hash" not in fields:
            raise ValueError("required fields are missing")
        max_uses = text("max_uses")
        return Grant(
            id=text("id") or "",
            agent=text("agent") or "",
            task=text("task") or "",
            secrets=tuple(json.loads(text("secrets") or "null")),
            created_at=created_at,
            expires_at=expires_at,
            max_uses=None if max_uses is None else int(max_uses),
            uses=int(text("uses") or "0"),
            status=GrantStatus(text("status")),
            approved_by=text("approved_by"),
            approved_at=moment("approved_at"),
            revoked_at=moment("revoked_at"),
            token_hash=fields["token_hash"],
            placeholders=tuple(sorted(json.loads(text("placeholders") or "{}").items())),
        )
    except (TypeError, ValueError, UnicodeDecodeError) as exc:
        raise GrantStoreError(f"grant store entry {grant_id} is corrupt: {exc}") from exc
