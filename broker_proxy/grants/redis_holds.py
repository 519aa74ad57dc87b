"""Held requests in the Redis database every replica shares (hold_table.py).

A change is made under one lock key (SET NX PX, released only by its holder): held requests come
at a person's pace, so one lock for all of them costs nothing and keeps the limits exact across
replicas. Items are JSON strings; sets index the pending ones (in all and per grant), a sorted
set the decided ones by when (for purging), and a set per grant and digest finds a retry's
decision. Every key is in the grant store's hash slot.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import redis

from broker_proxy.grants.hold_table import Item
from broker_proxy.grants.store import STORE_WAIT_SECONDS, GrantStoreError

_P = "{broker-proxy}:holds"
_LOCK = f"{_P}:lock"
_VERSION = f"{_P}:version"
_PENDING = f"{_P}:pending"
_DECIDED = f"{_P}:decided"
_LOCK_MS = 10_000  # a replica that dies holding it delays the others this long, no more
_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _item_key(hold_id: str) -> str:
    return f"{_P}:item:{hold_id}"


def _grant_pending(grant: str) -> str:
    return f"{_P}:pending:{grant}"


def _digest_key(grant: str, digest: str) -> str:
    return f"{_P}:by-digest:{grant}:{digest}"


def _allowance_key(grant: str, digest: str) -> str:
    return f"{_P}:allow:{grant}:{digest}"


class RedisHoldTable:
    shared = True

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._unlock = client.register_script(_UNLOCK)
        self._local = threading.Lock()  # one thread of this process at a time asks Redis
        self._depth = threading.local()
        with self._errors():
            client.set(_VERSION, secrets.randbelow(2**40) + 1, nx=True)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as error:
            raise GrantStoreError(f"held requests: the grant store cannot be reached "
                                  f"({type(error).__name__})") from None

    @contextmanager
    def locked(self) -> Iterator[None]:
        depth = getattr(self._depth, "n", 0)
        if depth:
            self._depth.n = depth + 1
            try:
                yield
            finally:
                self._depth.n -= 1
            return
        deadline = time.monotonic() + STORE_WAIT_SECONDS
        if not self._local.acquire(timeout=STORE_WAIT_SECONDS):
            raise GrantStoreError("held requests: the store stays locked")
        try:
            token = secrets.token_hex(16)
            with self._errors():
                while not self._client.set(_LOCK, token, nx=True, px=_LOCK_MS):
                    if time.monotonic() > deadline:
                        raise GrantStoreError("held requests: the store stays locked")
                    time.sleep(0.005)
            self._depth.n = 1
            try:
                yield
            finally:
                self._depth.n = 0
                with self._errors():
                    self._unlock(keys=[_LOCK], args=[token])
        finally:
            self._local.release()

    def _load(self, raws: list[Any]) -> list[Item]:
        return [json.loads(raw) for raw in raws if raw is not None]

    def get(self, hold_id: str) -> Item | None:
        with self._errors():
            raw = self._client.get(_item_key(hold_id))
        return json.loads(raw) if raw is not None else None

    def get_many(self, hold_ids: list[str]) -> list[Item]:
        if not hold_ids:
            return []
        with self._errors():
            return self._load(list(self._client.mget([_item_key(i) for i in hold_ids])))

    def put(self, item: Item) -> None:
        with self.locked(), self._errors():
            pipe = self._client.pipeline(transaction=True)
            hold_id, grant = item["id"], item["grant"]
            pipe.set(_item_key(hold_id), json.dumps(item))
            pipe.sadd(_digest_key(grant, item["digest"]), hold_id)
            if item["state"] == "pending":
                pipe.sadd(_PENDING, hold_id)
                pipe.sadd(_grant_pending(grant), hold_id)
            else:
                pipe.srem(_PENDING, hold_id)
                pipe.srem(_grant_pending(grant), hold_id)
                pipe.zadd(_DECIDED, {hold_id: float(item.get("decided_s") or 0)})
            pipe.incr(_VERSION)
            pipe.execute()

    def pending(self) -> list[Item]:
        with self._errors():
            ids = [raw.decode() for raw in self._client.smembers(_PENDING)]  # type: ignore[union-attr]
        return [item for item in self.get_many(ids) if item["state"] == "pending"]

    def count_pending(self, grant: str) -> tuple[int, int]:
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            pipe.scard(_PENDING)
            pipe.scard(_grant_pending(grant))
            total, of_grant = pipe.execute()
        return int(total), int(of_grant)

    def find(self, grant: str, digest: str) -> list[Item]:
        with self._errors():
            ids = [raw.decode() for raw in self._client.smembers(  # type: ignore[union-attr]
                _digest_key(grant, digest))]
        return self.get_many(ids)

    def purge_decided(self, before_s: float) -> None:
        with self.locked(), self._errors():
            ids = [raw.decode() for raw in self._client.zrangebyscore(  # type: ignore[union-attr]
                _DECIDED, "-inf", f"({before_s}", start=0, num=1000)]
            if not ids:
                return
            pipe = self._client.pipeline(transaction=True)
            for item in self.get_many(ids):
                pipe.srem(_digest_key(item["grant"], item["digest"]), item["id"])
            for hold_id in ids:
                pipe.delete(_item_key(hold_id))
            pipe.zrem(_DECIDED, *ids)
            pipe.incr(_VERSION)
            pipe.execute()

    def get_allowance(self, grant: str, digest: str) -> Item | None:
        with self._errors():
            raw = self._client.get(_allowance_key(grant, digest))
        return json.loads(raw) if raw is not None else None

    def put_allowance(self, grant: str, digest: str, allowance: Item | None) -> None:
        with self.locked(), self._errors():
            pipe = self._client.pipeline(transaction=True)
            if allowance is None:
                pipe.delete(_allowance_key(grant, digest))
            else:
                pipe.set(_allowance_key(grant, digest), json.dumps(allowance))
            pipe.incr(_VERSION)
            pipe.execute()

    def version(self) -> int:
        with self._errors():
            raw = self._client.get(_VERSION)
        return int(raw) if raw is not None else 0
