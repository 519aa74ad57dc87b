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
store that is gone; redis-py reconnects on the next command once Redis is back. A refused or
timed-out call opens a short circuit breaker (circuit.py): for the next second every call fails
at once, so 100 concurrent requests during an outage cost about one timeout, not a queue of them.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker_proxy.grants import budgets, rate_limits
from broker_proxy.grants.circuit import CircuitBreaker, CircuitOpen
from broker_proxy.grants.model import Grant, GrantStatus
from broker_proxy.grants.redis_holds import RedisHoldTable
from broker_proxy.grants.store import (
    GrantCounts,
    GrantIndex,
    GrantNotFound,
    GrantPage,
    Grants,
    GrantStateError,
    GrantStoreError,
    PageKey,
    ReserveResult,
    authenticate_token,
    ended_at,
)
from broker_proxy.policy.model import RateLimit

CONNECT_TIMEOUT = 0.5  # seconds to open a connection
COMMAND_TIMEOUT = 0.5  # seconds to wait for one reply
# How long a grant's hash outlives its expiry before Redis deletes it: long enough for
# `grant list` and incident review to see what ran out, short enough not to pile up.
RETENTION = timedelta(days=1)

_READ_BATCH = 200  # grants read per pipelined round trip

# One hash tag for every key, so the multi-key scripts also run on a Redis Cluster.
_PREFIX = "{broker-proxy}"
_INDEX_KEY = f"{_PREFIX}:grants"  # sorted set: score created_at (µs), member grant id
# Sorted sets, member grant id, so periodic work reads what is due (O(log n + due)), not every
# grant: scores are expires_at for expiry / active / pending / in-use (active and used at least
# once), revoked_at for revoked, and the instant the grant ended (GrantIndex.ENDED) for ended.
# The first four are in the order of GrantIndex; the scripts name them by position.
_INDEX_KEYS = (
    _INDEX_KEY,
    f"{_PREFIX}:by-expiry",
    f"{_PREFIX}:by-revoked",
    f"{_PREFIX}:by-end",
    f"{_PREFIX}:active",
    f"{_PREFIX}:pending",
    f"{_PREFIX}:in-use",
)
_CREATED, _EXPIRY, _REVOKED, _ENDED, _ACTIVE, _PENDING, _IN_USE = _INDEX_KEYS
_KEY_OF_INDEX = {GrantIndex.CREATED: _CREATED, GrantIndex.EXPIRES: _EXPIRY,
                 GrantIndex.REVOKED: _REVOKED, GrantIndex.ENDED: _ENDED}
# Set once the indexes above hold every grant (a store written before they existed is indexed
# once, when a store of this version first opens it).
_INDEX_VERSION_KEY = f"{_PREFIX}:index-version"
_INDEX_VERSION = "1"
# Live indexes are trimmed of entries this long past their expiry: a replica whose clock runs
# a little ahead must not drop a grant another replica still counts as live.
_TRIM_MARGIN = timedelta(minutes=1)

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

# KEYS: grant, then the _INDEX_KEYS. ARGV: id, expires_at, retention (ms), then one score per
# index key ('' for "not in that index"), then field/value pairs.
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local n = #KEYS - 1
redis.call('HSET', KEYS[1], unpack(ARGV, 4 + n))
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expires_ms = math.floor(tonumber(ARGV[2]) / 1000)
redis.call('PEXPIREAT', KEYS[1], math.max(expires_ms, now_ms) + tonumber(ARGV[3]))
for i = 1, n do
  if ARGV[3 + i] ~= '' then redis.call('ZADD', KEYS[1 + i], ARGV[3 + i], ARGV[1]) end
end
return 1
"""

# KEYS: grant, active index, in-use index. ARGV: now, id. The check and the increment are one
# step: no other client runs between them, so two replicas can never both spend the last use.
# The first use puts the grant in the in-use index; the last takes it out of both.
_RESERVE = _STATE_AT + """
local state = read_state(KEYS[1], tonumber(ARGV[1]))
if not state then return 'not_found' end
if state ~= 'active' then return state end
local uses = redis.call('HINCRBY', KEYS[1], 'uses', 1)
local fields = redis.call('HMGET', KEYS[1], 'expires_at', 'max_uses')
if fields[2] and uses >= tonumber(fields[2]) then
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('ZREM', KEYS[3], ARGV[2])
elseif uses == 1 then
  redis.call('ZADD', KEYS[3], fields[1], ARGV[2])
end
return 'reserved'
"""

# KEYS: grant, active index, in-use index. ARGV: id. Gives one reserved use back (a request
# that never left): the grant is live again in the indexes if that use had used it up.
_RELEASE = """
local fields = redis.call('HMGET', KEYS[1], 'status', 'expires_at', 'max_uses', 'uses')
if not fields[1] then return 0 end
local uses = tonumber(fields[4] or '0')
if uses <= 0 then return 0 end
uses = redis.call('HINCRBY', KEYS[1], 'uses', -1)
if fields[1] == 'active' then
  if not fields[3] or uses < tonumber(fields[3]) then
    redis.call('ZADD', KEYS[2], fields[2], ARGV[1])
  end
  if uses > 0 and (not fields[3] or uses < tonumber(fields[3])) then
    redis.call('ZADD', KEYS[3], fields[2], ARGV[1])
  else
    redis.call('ZREM', KEYS[3], ARGV[1])
  end
end
return 1
"""

# KEYS: grant, revoked, ended, active, pending, in-use indexes. ARGV: now, action, by, id.
# Same rules as SqliteGrantStore: approve/deny only a pending grant; revoke one that is active,
# pending or ran out (so `exec` can always close it).
_TRANSITION = _STATE_AT + """
local state = read_state(KEYS[1], tonumber(ARGV[1]))
if not state then return {'not_found'} end
local action = ARGV[2]
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
local ended = math.min(expires, tonumber(ARGV[1]))
if action == 'revoke' then
  if state == 'revoked' or state == 'denied' then return {'refused', state} end
  redis.call('HSET', KEYS[1], 'status', 'revoked', 'revoked_at', ARGV[1])
  redis.call('ZADD', KEYS[2], ARGV[1], ARGV[4])
  redis.call('ZADD', KEYS[3], ended, ARGV[4])
  redis.call('ZREM', KEYS[4], ARGV[4])
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('ZREM', KEYS[6], ARGV[4])
elseif state ~= 'pending' then
  return {'refused', state}
elseif action == 'approve' then
  redis.call('HSET', KEYS[1], 'status', 'active', 'approved_by', ARGV[3], 'approved_at', ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('ZADD', KEYS[4], expires, ARGV[4])
elseif action == 'deny' then
  redis.call('HSET', KEYS[1], 'status', 'denied', 'approved_by', ARGV[3], 'approved_at', ARGV[1])
  redis.call('ZREM', KEYS[5], ARGV[4])
  redis.call('ZADD', KEYS[3], ended, ARGV[4])
else
  error('unknown grant action')
end
local all = redis.call('HGETALL', KEYS[1])
table.insert(all, 1, 'ok')
return all
"""

# KEYS: the _INDEX_KEYS, then one grant key per id. ARGV: ended_before, then the ids. Deletes
# only a grant whose end (its score in the ended index) is at or before ended_before.
_PURGE = """
local n = #KEYS - #ARGV + 1
local ended = KEYS[4]
local cutoff = tonumber(ARGV[1])
local gone = 0
for i = 2, #ARGV do
  local id = ARGV[i]
  local score = redis.call('ZSCORE', ended, id)
  if score and tonumber(score) <= cutoff then
    gone = gone + redis.call('DEL', KEYS[n + i - 1])
    for k = 1, n do redis.call('ZREM', KEYS[k], id) end
  end
end
return gone
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
        self._holds: RedisHoldTable | None = None
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
        self._release = self._client.register_script(_RELEASE)
        self._transition_script = self._client.register_script(_TRANSITION)
        self._purge = self._client.register_script(_PURGE)
        self._take_rate = self._client.register_script(rate_limits.REDIS_TAKE)
        self._reserve_budget = self._client.register_script(budgets.REDIS_RESERVE)
        self._settle_budget = self._client.register_script(budgets.REDIS_SETTLE)
        self.circuit = CircuitBreaker(self._where)
        try:
            # Refuse to start against a store that is not there or refuses us: a typo in the
            # URL should stop `run` at once, not turn every request into a 503.
            self._client.ping()
            if self._client.get(_INDEX_VERSION_KEY) != _INDEX_VERSION.encode():
                self._build_indexes()
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
        scores = [_index_scores(grant)[key] for key in _INDEX_KEYS]
        with self._talking():
            created = self._create(
                keys=[_grant_key(grant.id), *_INDEX_KEYS],
                args=[grant.id, _to_micros(grant.expires_at), keep_ms,
                      *("" if score is None else score for score in scores), *pairs],
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
        if include_inactive:
            with self._talking():
                ids = [raw.decode() for raw in self._client.zrange(_INDEX_KEY, 0, -1)]
            return self._read(ids)
        moment = now if now is not None else datetime.now(UTC)
        after = f"({_to_micros(moment)}"
        with self._talking():  # live grants only, through the active and pending indexes
            ids = [raw.decode() for key in (_ACTIVE, _PENDING)
                   for raw in self._client.zrangebyscore(key, after, "+inf")]
        grants = sorted(self._read(ids), key=lambda g: (g.created_at, g.id))
        return [g for g in grants if g.state_at(moment) in ("active", "pending")]

    def page(self, after: PageKey | None, limit: int, *,
             newest_first: bool = False, skip: int = 0) -> GrantPage:
        # By rank in the created index (score created_at, ties in id order, as the key is):
        # the cursor's rank is O(log n), then one ZRANGE of `limit` members.
        with self._talking():
            start = skip + (0 if after is None else self._rank_after(after, newest_first))
            take = self._client.zrevrange if newest_first else self._client.zrange
            members: list[tuple[bytes, float]] = take(  # type: ignore[assignment]
                _CREATED, start, start + limit, withscores=True)  # one more: a next page?
        more = len(members) > limit
        del members[limit:]
        grants = self._read([bytes(member).decode() for member, _ in members])
        if not more or not members:
            return GrantPage(grants, None)
        member, score = members[-1]
        return GrantPage(grants, (_EPOCH + timedelta(microseconds=int(score)),
                                  bytes(member).decode()))

    def total(self) -> int:
        with self._talking():
            return int(self._client.zcard(_CREATED))

    def _rank_after(self, after: PageKey, newest_first: bool) -> int:
        """How many members of the created index come before or at `after` in the order."""
        rank = (self._client.zrevrank if newest_first else self._client.zrank)(
            _CREATED, after[1])
        if rank is not None:
            return int(rank) + 1  # a member's score (its created_at) never changes
        # The cursor's grant was purged meanwhile: count by score, then the ties by id.
        score = _to_micros(after[0])
        ties = [bytes(m).decode() for m in self._client.zrangebyscore(_CREATED, score, score)]
        if newest_first:
            return int(self._client.zcount(_CREATED, f"({score}", "+inf")) + sum(
                1 for t in ties if t > after[1])
        return int(self._client.zcount(_CREATED, "-inf", f"({score}")) + sum(
            1 for t in ties if t < after[1])

    def indexed(
        self, index: GrantIndex, after: tuple[datetime, str], until: datetime, limit: int
    ) -> Grants:
        key = _KEY_OF_INDEX[index]
        after_score, after_id = _to_micros(after[0]), after[1].encode()
        ids: Ids = []
        offset = 0
        with self._talking():
            # Members with equal scores come in id order, as the cursor needs; the few at the
            # cursor's own score that it already passed are skipped.
            while len(ids) < limit:
                page: list[tuple[bytes, float]] = self._client.zrangebyscore(  # type: ignore[assignment]
                    key, after_score, _to_micros(until), start=offset, num=limit,
                    withscores=True)
                ids += [bytes(member).decode() for member, score in page
                         if float(score) > after_score or bytes(member) > after_id]
                if len(page) < limit:
                    break
                offset += limit
        return self._read(ids[:limit])

    def counts(self, now: datetime, expiring_within: timedelta) -> GrantCounts:
        moment = _to_micros(now)
        with self._talking():
            pipe = self._client.pipeline(transaction=False)
            pipe.zcount(_ACTIVE, f"({moment}", "+inf")
            pipe.zcount(_PENDING, f"({moment}", "+inf")
            pipe.zcount(_IN_USE, f"({moment}", _to_micros(now + expiring_within))
            # Clean-up in the same round trip: what expired leaves the live indexes, so they
            # stay as small as the live grants (O(log n + expired since the last call)).
            trim = _to_micros(now - _TRIM_MARGIN)
            for key in (_ACTIVE, _PENDING, _IN_USE):
                pipe.zremrangebyscore(key, "-inf", trim)
            active, pending, in_use, *_ = pipe.execute()
        return GrantCounts(active=int(active), pending=int(pending), expiring_in_use=int(in_use))

    def purge(self, grant_ids: Sequence[str], ended_before: datetime) -> int:
        if not grant_ids:
            return 0
        with self._talking():
            gone = self._purge(keys=[*_INDEX_KEYS, *(_grant_key(gid) for gid in grant_ids)],
                               args=[_to_micros(ended_before), *grant_ids])
        return int(gone)

    def probe_write(self) -> None:
        # A key of its own that expires: a replica that is read-only or out of memory
        # (maxmemory with noeviction) refuses it as it would refuse a use.
        with self._talking():
            self._client.set(f"{_PREFIX}:write-probe", "1", px=60_000)

    def load_many(self, grants: Iterable[Grant], *, batch: int = 10_000) -> None:
        """Write many grants at once, pipelined, without the existence check of `create`:
        for benchmarks and restores into an empty store, not for issuing grants."""
        keep = RETENTION // timedelta(milliseconds=1)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        with self._talking():
            pipe = self._client.pipeline(transaction=False)
            scores: dict[str, dict[str, int]] = {key: {} for key in _INDEX_KEYS}
            for count, grant in enumerate(grants, 1):
                _check_storable(grant)
                key = _grant_key(grant.id)
                pipe.hset(key, mapping=_fields_from_grant(grant))
                pipe.pexpireat(key, max(_to_micros(grant.expires_at) // 1000, now_ms) + keep)
                for index_key, score in _index_scores(grant).items():
                    if score is not None:
                        scores[index_key][grant.id] = score
                if count % batch == 0:
                    _flush_indexes(pipe, scores)
                    pipe.execute()
            _flush_indexes(pipe, scores)
            pipe.execute()

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True,
                    deadline: float | None = None) -> ReserveResult:
        # `wait` and `deadline` are ignored: a remote store is only ever used off the event
        # loop, and no call waits longer than its timeouts (or at all while the circuit is open).
        with self._talking():
            outcome = self._reserve(keys=[_grant_key(grant_id), _ACTIVE, _IN_USE],
                                    args=[_to_micros(now), grant_id])
        try:
            # The script answers "reserved" or the state that refused the use, which are
            # exactly ReserveResult's values.
            return ReserveResult(outcome.decode())
        except (AttributeError, ValueError):
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer") from None

    def take_rate(self, grant: Grant, secret: str, rate: RateLimit, now: datetime, *,
                  wait: bool = True, deadline: float | None = None) -> float:
        """One request against the grant's bucket for ``secret`` (rate_limits.py): 0.0 when
        admitted, else the seconds until it would be. One Lua script: atomic across replicas."""
        keep_until = _to_micros(grant.expires_at) // 1000 + 60_000
        with self._talking():
            waiting = self._take_rate(keys=[_rate_key(grant.id, secret)],
                                      args=[_to_micros(now), rate.interval_us, rate.burst,
                                            keep_until])
        try:
            return int(waiting) / 1_000_000
        except (TypeError, ValueError):
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer") from None

    def limit_rate(self, grant: Grant, secret: str, rate: RateLimit) -> None:
        """Keep the grant's own (stricter) rate for ``secret``: in its bucket, which the take
        script reads, and in one hash per grant, which `own_rates` reads without a scan."""
        key, own = _rate_key(grant.id, secret), _own_rates_key(grant.id)
        keep_until = _to_micros(grant.expires_at) // 1000 + 60_000
        with self._talking():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping={"interval": rate.interval_us, "burst": rate.burst})
            pipe.hset(own, secret, f"{rate.interval_us}:{rate.burst}")
            pipe.pexpireat(key, keep_until)
            pipe.pexpireat(own, keep_until)
            pipe.execute()

    def own_rates(self, grant_id: str) -> dict[str, tuple[int, int]]:
        """secret -> (interval µs, burst) the grant asked for at issue."""
        with self._talking():
            stored = self._client.hgetall(_own_rates_key(grant_id))
        found: dict[str, tuple[int, int]] = {}
        for name, value in stored.items():
            interval, _, burst = value.decode().partition(":")
            found[name.decode()] = (int(interval), int(burst))
        return found

    def reserve_budget(self, grant: Grant, secret: str, caps: tuple[int | None, ...],
                       asked: tuple[int, int, int, int], *, wait: bool = True,
                       deadline: float | None = None) -> str | None:
        """Hold ``asked`` against the grant's budget for ``secret`` (budgets.py): None when
        held, else the dimension over its cap. One Lua script: atomic across replicas."""
        keep_until = _to_micros(grant.expires_at) // 1000 + 60_000
        with self._talking():
            over = self._reserve_budget(
                keys=[_budget_key(grant.id, secret)],
                args=[*("" if cap is None else cap for cap in caps), *asked, keep_until])
        text = over.decode() if isinstance(over, bytes) else str(over or "")
        if text and text not in budgets.DIMENSIONS:
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer")
        return text or None

    def settle_budget(self, grant_id: str, secret: str, held: tuple[int, int, int, int],
                      used: tuple[int, int, int, int], *, wait: bool = True) -> None:
        """Release a reservation and charge what the answer used."""
        with self._talking():
            self._settle_budget(keys=[_budget_key(grant_id, secret)], args=[*held, *used])

    def limit_budget(self, grant: Grant, secret: str, own: tuple[int | None, ...]) -> None:
        """Keep the grant's own (stricter) caps for ``secret`` in its budget hash."""
        key = _budget_key(grant.id, secret)
        fields = {name: value for name, value in zip(("own_in", "own_out", "own_usd", "own_req"),
                                                     own, strict=True) if value is not None}
        if not fields:
            return
        with self._talking():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.pexpireat(key, _to_micros(grant.expires_at) // 1000 + 60_000)
            pipe.execute()

    def budget_use(self, grant_id: str) -> dict[str, budgets.BudgetUse]:
        """secret -> what the grant has used and holds, for `grant show`."""
        found: dict[str, budgets.BudgetUse] = {}
        with self._talking():
            for key in self._client.scan_iter(match=_budget_key(grant_id, "*"), count=1000):
                values = self._client.hmget(key, "used_in", "used_out", "used_usd", "held_in",
                                            "held_out", "held_usd", "held_req", "own_in",
                                            "own_out", "own_usd", "own_req")
                numbers = [int(v or 0) for v in values[:7]]
                own = tuple(None if v is None else int(v) for v in values[7:])
                name = key.decode().rsplit(":", 1)[1]
                found[name] = budgets.BudgetUse((*numbers[:3], 0), tuple(numbers[3:]), own)
        return found
    def release_use(self, grant_id: str) -> bool:
        with self._talking():
            released = self._release(keys=[_grant_key(grant_id), _ACTIVE, _IN_USE],
                                     args=[grant_id])
        return bool(released == 1)

    def approve(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "approve", by)

    def deny(self, grant_id: str, by: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "deny", by)

    def revoke(self, grant_id: str, now: datetime) -> Grant:
        return self._transition(grant_id, now, "revoke", "")

    def hold_table(self) -> RedisHoldTable:
        """Requests held for approval, in keys of their own in this database (redis_holds.py)."""
        if self._holds is None:
            self._holds = RedisHoldTable(self._client)
        return self._holds

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
                keys=[_grant_key(grant_id), _REVOKED, _ENDED, _ACTIVE, _PENDING, _IN_USE],
                args=[_to_micros(now), action, by, grant_id],
            )
        head = reply[0].decode()
        if head == "not_found":
            raise GrantNotFound(grant_id)
        if head == "refused":
            raise GrantStateError(grant_id, reply[1].decode(), action)
        flat = reply[1:]
        return _grant_from_fields(grant_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    def _read(self, ids: Ids) -> Grants:
        """The grants of `ids`, in that order; ids whose hash Redis already expired (RETENTION
        after expiry) are dropped from every index, so no later read meets them again."""
        if not ids:
            return []
        rows: list[Any] = []
        with self._talking():
            # A few hundred per round trip: each reply comes well within COMMAND_TIMEOUT on a
            # loaded machine, so a listing page never trips the circuit by its size alone.
            for start in range(0, len(ids), _READ_BATCH):
                pipe = self._client.pipeline(transaction=False)
                for grant_id in ids[start:start + _READ_BATCH]:
                    pipe.hgetall(_grant_key(grant_id))
                rows += pipe.execute()
            gone = [gid for gid, fields in zip(ids, rows, strict=True) if not fields]
            if gone:
                pipe = self._client.pipeline(transaction=False)
                for key in _INDEX_KEYS:
                    pipe.zrem(key, *gone)
                pipe.execute()
        return [_grant_from_fields(gid, fields)
                for gid, fields in zip(ids, rows, strict=True) if fields]

    def _build_indexes(self) -> None:
        """Index the grants of a store written before the indexes existed (once; idempotent,
        so two processes doing it at once do no harm). A transition made by an older version
        while this runs may leave a stale live entry: it only counts in a gauge until expiry."""
        start = 0
        while True:
            ids = [raw.decode() for raw in self._client.zrange(_INDEX_KEY, start, start + 999)]
            pipe = self._client.pipeline(transaction=False)
            for grant_id in ids:
                pipe.hgetall(_grant_key(grant_id))
            rows = pipe.execute()
            for grant_id, fields in zip(ids, rows, strict=True):
                try:
                    _pipe_indexes(pipe, _grant_from_fields(grant_id, fields))
                except GrantStoreError:
                    continue  # gone or corrupt: reading it says so, indexing it cannot help
            pipe.execute()
            if len(ids) < 1000:
                break
            start += len(ids)
        self._client.set(_INDEX_VERSION_KEY, _INDEX_VERSION)

    @contextmanager
    def _talking(self) -> Iterator[None]:
        """Every Redis failure inside the block becomes GrantStoreError (fail closed)."""
        if self._closed:
            raise GrantStoreError(f"grant store {self._where} is closed")
        try:
            probe = self.circuit.before_call()
        except CircuitOpen as exc:
            raise GrantStoreError(f"grant store {self._where} is unavailable: {exc}") from None
        try:
            yield
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The server is gone or frozen: the next calls fail at once for a moment.
            error = self._unusable(exc)
            self.circuit.failed(probe, _detail(exc))
            raise error from exc
        except redis.RedisError as exc:
            # Redis answered (a script error, a wrong type): it is there, the circuit stays.
            self.circuit.succeeded(probe)
            raise self._unusable(exc) from exc
        except BaseException:
            self.circuit.succeeded(probe)
            raise
        self.circuit.succeeded(probe)

    def _unusable(self, exc: BaseException) -> GrantStoreError:
        # redis-py messages name the failure and the address ("Error 111 connecting to
        # host:port. Connection refused.", "Timeout reading from socket"), never a password
        # or a stored value; one line so the CLI and the log show it whole.
        return GrantStoreError(f"grant store {self._where} is unavailable: {_detail(exc)}")


def _detail(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


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


Ids = list[str]  # `list` is a method name inside the class


def _grant_key(grant_id: str) -> str:
    return f"{_PREFIX}:grant:{grant_id}"


def _rate_key(grant_id: str, secret: str) -> str:
    return f"{_PREFIX}:rate:{grant_id}:{secret}"


def _budget_key(grant_id: str, secret: str) -> str:
    return f"{_PREFIX}:budget:{grant_id}:{secret}"


def _own_rates_key(grant_id: str) -> str:
    return f"{_PREFIX}:rates-own:{grant_id}"


def _index_scores(grant: Grant) -> dict[str, int | None]:
    """The score of the grant in each index (None: not in it), as the scripts keep them."""
    expires = _to_micros(grant.expires_at)
    status = grant.status
    used_up = grant.max_uses is not None and grant.uses >= grant.max_uses
    usable = status is GrantStatus.ACTIVE and not used_up
    return {
        _CREATED: _to_micros(grant.created_at),
        _EXPIRY: expires,
        _REVOKED: _to_micros(grant.revoked_at)
        if status is GrantStatus.REVOKED and grant.revoked_at is not None else None,
        _ENDED: _to_micros(ended_at(grant)),
        _ACTIVE: expires if usable else None,
        _PENDING: expires if status is GrantStatus.PENDING else None,
        _IN_USE: expires if usable and grant.uses > 0 else None,
    }


def _pipe_indexes(pipe: Any, grant: Grant) -> None:
    for key, score in _index_scores(grant).items():
        if score is not None:
            pipe.zadd(key, {grant.id: score})


def _flush_indexes(pipe: Any, scores: dict[str, dict[str, int]]) -> None:
    """One ZADD per index for a whole batch, then start the next batch empty."""
    for key, members in scores.items():
        if members:
            pipe.zadd(key, members)
            members.clear()


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
