"""The grant store in Redis, shared by every broker replica and CLI that names the same URL.

Each verb that judges a grant's state and changes it is one Lua script, so Redis runs the
check and the write as one step with nothing in between: `max_uses` holds across replicas
exactly as it holds across processes with SQLite (redis_scripts.py). The keys are laid out in
redis_keys.py, a grant's hash in redis_codec.py.

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

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from broker_proxy.grants import budgets, rate_limits, redis_scripts
from broker_proxy.grants.circuit import CircuitBreaker, CircuitOpen
from broker_proxy.grants.model import Grant
from broker_proxy.grants.redis_codec import (
    EPOCH,
    check_storable,
    fields_from_grant,
    grant_from_fields,
    to_micros,
)
from broker_proxy.grants.redis_holds import RedisHoldTable
from broker_proxy.grants.redis_keys import (
    ACTIVE_INDEX,
    CREATED_INDEX,
    ENDED_INDEX,
    IN_USE_INDEX,
    INDEX_KEYS,
    INDEX_VERSION,
    INDEX_VERSION_KEY,
    KEY_OF_INDEX,
    PENDING_INDEX,
    PREFIX,
    REVOKED_INDEX,
    budget_key,
    flush_indexes,
    grant_key,
    index_scores,
    own_rates_key,
    pipe_indexes,
    rate_key,
)
from broker_proxy.grants.redis_url import parse_url
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
)
from broker_proxy.policy.model import RateLimit

CONNECT_TIMEOUT = 0.5  # seconds to open a connection
COMMAND_TIMEOUT = 0.5  # seconds to wait for one reply
# How long a grant's hash outlives its expiry before Redis deletes it: long enough for
# `grant list` and incident review to see what ran out, short enough not to pile up.
RETENTION = timedelta(days=1)

_READ_BATCH = 200  # grants read per pipelined round trip

# Live indexes are trimmed of entries this long past their expiry: a replica whose clock runs
# a little ahead must not drop a grant another replica still counts as live.
_TRIM_MARGIN = timedelta(minutes=1)

Ids = list[str]  # `list` is a method name inside the class


class RedisGrantStore:
    """A `GrantStore` in one Redis database; thread-safe (redis-py pools its connections)."""

    # Every call is a network round trip (up to the 0.5 s timeout): callers on an event loop
    # should make them from a worker thread.
    remote = True

    def __init__(self, url: str) -> None:
        options, self._where = parse_url(url)
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
        self._create = self._client.register_script(redis_scripts.CREATE)
        self._reserve = self._client.register_script(redis_scripts.RESERVE)
        self._release = self._client.register_script(redis_scripts.RELEASE)
        self._transition_script = self._client.register_script(redis_scripts.TRANSITION)
        self._purge = self._client.register_script(redis_scripts.PURGE)
        self._take_rate = self._client.register_script(rate_limits.REDIS_TAKE)
        self._reserve_budget = self._client.register_script(budgets.REDIS_RESERVE)
        self._settle_budget = self._client.register_script(budgets.REDIS_SETTLE)
        self.circuit = CircuitBreaker(self._where)
        try:
            # Refuse to start against a store that is not there or refuses us: a typo in the
            # URL should stop `run` at once, not turn every request into a 503.
            self._client.ping()
            if self._client.get(INDEX_VERSION_KEY) != INDEX_VERSION.encode():
                self._build_indexes()
        except redis.RedisError as exc:
            self._client.close()
            raise self._unusable(exc) from exc

    # -- the GrantStore verbs -------------------------------------------------------------

    def create(self, grant: Grant) -> None:
        check_storable(grant)
        pairs: list[Any] = []
        for name, value in fields_from_grant(grant).items():
            pairs += [name, value]
        keep_ms = RETENTION // timedelta(milliseconds=1)
        scores = [index_scores(grant)[key] for key in INDEX_KEYS]
        with self._talking():
            created = self._create(
                keys=[grant_key(grant.id), *INDEX_KEYS],
                args=[grant.id, to_micros(grant.expires_at), keep_ms,
                      *("" if score is None else score for score in scores), *pairs],
            )
        if not created:
            raise GrantStoreError(f"grant {grant.id} already exists in {self._where}")

    def get(self, grant_id: str) -> Grant | None:
        with self._talking():
            fields = self._client.hgetall(grant_key(grant_id))
        return grant_from_fields(grant_id, fields) if fields else None

    def authenticate(self, token: str) -> Grant | None:
        return authenticate_token(token, self.get)

    def list(
        self, *, include_inactive: bool = True, now: datetime | None = None
    ) -> list[Grant]:
        if include_inactive:
            with self._talking():
                ids = [raw.decode() for raw in self._client.zrange(CREATED_INDEX, 0, -1)]
            return self._read(ids)
        moment = now if now is not None else datetime.now(UTC)
        after = f"({to_micros(moment)}"
        with self._talking():  # live grants only, through the active and pending indexes
            ids = [raw.decode() for key in (ACTIVE_INDEX, PENDING_INDEX)
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
                CREATED_INDEX, start, start + limit, withscores=True)  # one more: a next page?
        more = len(members) > limit
        del members[limit:]
        grants = self._read([bytes(member).decode() for member, _ in members])
        if not more or not members:
            return GrantPage(grants, None)
        member, score = members[-1]
        return GrantPage(grants, (EPOCH + timedelta(microseconds=int(score)),
                                  bytes(member).decode()))

    def total(self) -> int:
        with self._talking():
            return int(self._client.zcard(CREATED_INDEX))

    def _rank_after(self, after: PageKey, newest_first: bool) -> int:
        """How many members of the created index come before or at `after` in the order."""
        rank = (self._client.zrevrank if newest_first else self._client.zrank)(
            CREATED_INDEX, after[1])
        if rank is not None:
            return int(rank) + 1  # a member's score (its created_at) never changes
        # The cursor's grant was purged meanwhile: count by score, then the ties by id.
        score = to_micros(after[0])
        ties = [bytes(m).decode() for m in self._client.zrangebyscore(CREATED_INDEX, score, score)]
        if newest_first:
            return int(self._client.zcount(CREATED_INDEX, f"({score}", "+inf")) + sum(
                1 for t in ties if t > after[1])
        return int(self._client.zcount(CREATED_INDEX, "-inf", f"({score}")) + sum(
            1 for t in ties if t < after[1])

    def indexed(
        self, index: GrantIndex, after: tuple[datetime, str], until: datetime, limit: int
    ) -> Grants:
        key = KEY_OF_INDEX[index]
        after_score, after_id = to_micros(after[0]), after[1].encode()
        ids: Ids = []
        offset = 0
        with self._talking():
            # Members with equal scores come in id order, as the cursor needs; the few at the
            # cursor's own score that it already passed are skipped.
            while len(ids) < limit:
                page: list[tuple[bytes, float]] = self._client.zrangebyscore(  # type: ignore[assignment]
                    key, after_score, to_micros(until), start=offset, num=limit,
                    withscores=True)
                ids += [bytes(member).decode() for member, score in page
                         if float(score) > after_score or bytes(member) > after_id]
                if len(page) < limit:
                    break
                offset += limit
        return self._read(ids[:limit])

    def counts(self, now: datetime, expiring_within: timedelta) -> GrantCounts:
        moment = to_micros(now)
        with self._talking():
            pipe = self._client.pipeline(transaction=False)
            pipe.zcount(ACTIVE_INDEX, f"({moment}", "+inf")
            pipe.zcount(PENDING_INDEX, f"({moment}", "+inf")
            pipe.zcount(IN_USE_INDEX, f"({moment}", to_micros(now + expiring_within))
            # Clean-up in the same round trip: what expired leaves the live indexes, so they
            # stay as small as the live grants (O(log n + expired since the last call)).
            trim = to_micros(now - _TRIM_MARGIN)
            for key in (ACTIVE_INDEX, PENDING_INDEX, IN_USE_INDEX):
                pipe.zremrangebyscore(key, "-inf", trim)
            active, pending, in_use, *_ = pipe.execute()
        return GrantCounts(active=int(active), pending=int(pending), expiring_in_use=int(in_use))

    def purge(self, grant_ids: Sequence[str], ended_before: datetime) -> int:
        if not grant_ids:
            return 0
        with self._talking():
            gone = self._purge(keys=[*INDEX_KEYS, *(grant_key(gid) for gid in grant_ids)],
                               args=[to_micros(ended_before), *grant_ids])
        return int(gone)

    def probe_write(self) -> None:
        # A key of its own that expires: a replica that is read-only or out of memory
        # (maxmemory with noeviction) refuses it as it would refuse a use.
        with self._talking():
            self._client.set(f"{PREFIX}:write-probe", "1", px=60_000)

    def load_many(self, grants: Iterable[Grant], *, batch: int = 10_000) -> None:
        """Write many grants at once, pipelined, without the existence check of `create`:
        for benchmarks and restores into an empty store, not for issuing grants."""
        keep = RETENTION // timedelta(milliseconds=1)
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        with self._talking():
            pipe = self._client.pipeline(transaction=False)
            scores: dict[str, dict[str, int]] = {key: {} for key in INDEX_KEYS}
            for count, grant in enumerate(grants, 1):
                check_storable(grant)
                key = grant_key(grant.id)
                pipe.hset(key, mapping=fields_from_grant(grant))
                pipe.pexpireat(key, max(to_micros(grant.expires_at) // 1000, now_ms) + keep)
                for index_key, score in index_scores(grant).items():
                    if score is not None:
                        scores[index_key][grant.id] = score
                if count % batch == 0:
                    flush_indexes(pipe, scores)
                    pipe.execute()
            flush_indexes(pipe, scores)
            pipe.execute()

    def reserve_use(self, grant_id: str, now: datetime, *, wait: bool = True,
                    deadline: float | None = None) -> ReserveResult:
        # `wait` and `deadline` are ignored: a remote store is only ever used off the event
        # loop, and no call waits longer than its timeouts (or at all while the circuit is open).
        with self._talking():
            outcome = self._reserve(keys=[grant_key(grant_id), ACTIVE_INDEX, IN_USE_INDEX],
                                    args=[to_micros(now), grant_id])
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
        keep_until = to_micros(grant.expires_at) // 1000 + 60_000
        with self._talking():
            waiting = self._take_rate(keys=[rate_key(grant.id, secret)],
                                      args=[to_micros(now), rate.interval_us, rate.burst,
                                            keep_until])
        try:
            return int(waiting) / 1_000_000
        except (TypeError, ValueError):
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer") from None

    def limit_rate(self, grant: Grant, secret: str, rate: RateLimit) -> None:
        """Keep the grant's own (stricter) rate for ``secret``: in its bucket, which the take
        script reads, and in one hash per grant, which `own_rates` reads without a scan."""
        key, own = rate_key(grant.id, secret), own_rates_key(grant.id)
        keep_until = to_micros(grant.expires_at) // 1000 + 60_000
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
            stored = self._client.hgetall(own_rates_key(grant_id))
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
        keep_until = to_micros(grant.expires_at) // 1000 + 60_000
        with self._talking():
            over = self._reserve_budget(
                keys=[budget_key(grant.id, secret)],
                args=[*("" if cap is None else cap for cap in caps), *asked, keep_until])
        text = over.decode() if isinstance(over, bytes) else str(over or "")
        if text and text not in budgets.DIMENSIONS:
            raise GrantStoreError(f"grant store {self._where} gave an unknown answer")
        return text or None

    def settle_budget(self, grant_id: str, secret: str, held: tuple[int, int, int, int],
                      used: tuple[int, int, int, int], *, wait: bool = True) -> None:
        """Release a reservation and charge what the answer used."""
        with self._talking():
            self._settle_budget(keys=[budget_key(grant_id, secret)], args=[*held, *used])

    def limit_budget(self, grant: Grant, secret: str, own: tuple[int | None, ...]) -> None:
        """Keep the grant's own (stricter) caps for ``secret`` in its budget hash."""
        key = budget_key(grant.id, secret)
        fields = {name: value for name, value in zip(("own_in", "own_out", "own_usd", "own_req"),
                                                     own, strict=True) if value is not None}
        if not fields:
            return
        with self._talking():
            pipe = self._client.pipeline(transaction=True)
            pipe.hset(key, mapping=fields)
            pipe.pexpireat(key, to_micros(grant.expires_at) // 1000 + 60_000)
            pipe.execute()

    def budget_use(self, grant_id: str) -> dict[str, budgets.BudgetUse]:
        """secret -> what the grant has used and holds, for `grant show`."""
        found: dict[str, budgets.BudgetUse] = {}
        with self._talking():
            for key in self._client.scan_iter(match=budget_key(grant_id, "*"), count=1000):
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
            released = self._release(keys=[grant_key(grant_id), ACTIVE_INDEX, IN_USE_INDEX],
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
                keys=[grant_key(grant_id), REVOKED_INDEX, ENDED_INDEX, ACTIVE_INDEX,
                      PENDING_INDEX, IN_USE_INDEX],
                args=[to_micros(now), action, by, grant_id],
            )
        head = reply[0].decode()
        if head == "not_found":
            raise GrantNotFound(grant_id)
        if head == "refused":
            raise GrantStateError(grant_id, reply[1].decode(), action)
        flat = reply[1:]
        return grant_from_fields(grant_id, dict(zip(flat[::2], flat[1::2], strict=True)))

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
                    pipe.hgetall(grant_key(grant_id))
                rows += pipe.execute()
            gone = [gid for gid, fields in zip(ids, rows, strict=True) if not fields]
            if gone:
                pipe = self._client.pipeline(transaction=False)
                for key in INDEX_KEYS:
                    pipe.zrem(key, *gone)
                pipe.execute()
        return [grant_from_fields(gid, fields)
                for gid, fields in zip(ids, rows, strict=True) if fields]

    def _build_indexes(self) -> None:
        """Index the grants of a store written before the indexes existed (once; idempotent,
        so two processes doing it at once do no harm). A transition made by an older version
        while this runs may leave a stale live entry: it only counts in a gauge until expiry."""
        start = 0
        while True:
            ids = [raw.decode() for raw in self._client.zrange(CREATED_INDEX, start, start + 999)]
            pipe = self._client.pipeline(transaction=False)
            for grant_id in ids:
                pipe.hgetall(grant_key(grant_id))
            rows = pipe.execute()
            for grant_id, fields in zip(ids, rows, strict=True):
                try:
                    pipe_indexes(pipe, grant_from_fields(grant_id, fields))
                except GrantStoreError:
                    continue  # gone or corrupt: reading it says so, indexing it cannot help
            pipe.execute()
            if len(ids) < 1000:
                break
            start += len(ids)
        self._client.set(INDEX_VERSION_KEY, INDEX_VERSION)

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
