"""Request rates per grant, held in the grant store so they are exact across processes and hosts.

A generic cell rate (GCRA), kept as one number per (grant, secret): the theoretical arrival time
``tat`` of the next request at the steady rate. A request at ``now`` is admitted when
``max(tat, now) + interval - now <= burst * interval``; then ``tat`` moves on by one interval.
Check and write happen in one store step (an IMMEDIATE transaction in SQLite, one Lua script in
Redis), like ``reserve_use``, so N workers or replicas never admit more than one bucket allows.

A grant may be issued with a stricter rate than the policy's (never a looser one): that is kept
beside the bucket, and each step uses the stricter of the two, so a policy tightened after issue
applies at once and a policy loosened later never loosens a grant that asked for less.
"""

from __future__ import annotations

import sqlite3

from broker_proxy.policy.model import RateLimit

# Created on first use, beside the grants table: the grants schema (and its version) stay as they
# are, and a store that never meets a rate never has the table.
SQLITE_TABLE = (
    "CREATE TABLE IF NOT EXISTS grant_rates ("
    " grant_id TEXT NOT NULL, secret TEXT NOT NULL,"
    " tat INTEGER NOT NULL DEFAULT 0,"
    " interval_us INTEGER, burst INTEGER,"  # the grant's own, stricter rate, if it asked for one
    " PRIMARY KEY (grant_id, secret)) STRICT"
)


def gcra_step(tat: int, now: int, interval: int, burst: int) -> tuple[int, int]:
    """(new tat, 0) when admitted, else (tat unchanged, microseconds until it would be)."""
    start = max(tat, now)
    over = start + interval - now - burst * interval
    if over > 0:
        return tat, over
    return start + interval, 0


def stricter(interval: int, burst: int, own_interval: int | None,
             own_burst: int | None) -> tuple[int, int]:
    """The policy's rate, tightened by the grant's own where it asked for less."""
    if own_interval is not None:
        interval = max(interval, own_interval)
    if own_burst is not None:
        burst = min(burst, own_burst)
    return interval, burst


def sqlite_take(conn: sqlite3.Connection, grant_id: str, secret: str, now: int,
                rate: RateLimit) -> int:
    """One step inside the caller's IMMEDIATE transaction; 0 or microseconds to wait."""
    row = conn.execute("SELECT tat, interval_us, burst FROM grant_rates"
                       " WHERE grant_id = ? AND secret = ?", (grant_id, secret)).fetchone()
    tat, own_interval, own_burst = row if row is not None else (0, None, None)
    interval, burst = stricter(rate.interval_us, rate.burst, own_interval, own_burst)
    new_tat, wait = gcra_step(int(tat), now, interval, burst)
    if wait:
        return wait
    conn.execute("INSERT INTO grant_rates (grant_id, secret, tat) VALUES (?, ?, ?)"
                 " ON CONFLICT (grant_id, secret) DO UPDATE SET tat = excluded.tat",
                 (grant_id, secret, new_tat))
    return 0


def sqlite_limit(conn: sqlite3.Connection, grant_id: str, secret: str, rate: RateLimit) -> None:
    """Record the grant's own rate for ``secret`` (the caller checked it is no looser)."""
    conn.execute("INSERT INTO grant_rates (grant_id, secret, interval_us, burst)"
                 " VALUES (?, ?, ?, ?) ON CONFLICT (grant_id, secret) DO UPDATE SET"
                 " interval_us = excluded.interval_us, burst = excluded.burst",
                 (grant_id, secret, rate.interval_us, rate.burst))


def sqlite_own_rates(conn: sqlite3.Connection, grant_id: str) -> dict[str, tuple[int, int]]:
    """secret -> (interval_us, burst) the grant asked for."""
    rows = conn.execute("SELECT secret, interval_us, burst FROM grant_rates WHERE grant_id = ?"
                        " AND interval_us IS NOT NULL", (grant_id,)).fetchall()
    return {secret: (int(interval), int(burst)) for secret, interval, burst in rows}


# KEYS[1] the bucket hash; ARGV now, interval, burst, expire-at (ms) of the grant. Numbers are
# doubles in Lua: microseconds since 1970 stay below 2^53 until the year 2255.
REDIS_TAKE = """
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local own = redis.call('HMGET', KEYS[1], 'tat', 'interval', 'burst')
if own[2] and tonumber(own[2]) > interval then interval = tonumber(own[2]) end
if own[3] and tonumber(own[3]) < burst then burst = tonumber(own[3]) end
local now = tonumber(ARGV[1])
local start = tonumber(own[1] or '0')
if start < now then start = now end
local over = start + interval - now - burst * interval
if over > 0 then return string.format('%.0f', over) end
redis.call('HSET', KEYS[1], 'tat', string.format('%.0f', start + interval))
redis.call('PEXPIREAT', KEYS[1], ARGV[4])
return '0'
"""
