"""LLM token and cost budgets and concurrency per grant, held in the grant store beside the rate
buckets.

Per (grant, secret): what answers have used (``used_*``) and what requests in flight have
reserved (``held_*``), in input tokens, output tokens, micro-dollars and requests (a request in
flight holds one; its "used" stays 0, so the cap is on requests at once). Admitting a request
checks ``used + held + its reservation <= cap`` for each capped dimension and adds the
reservation to ``held`` in one store step (an IMMEDIATE transaction in SQLite, one Lua script in
Redis), so workers and replicas never admit more than the caps allow; settling moves the
reservation out of ``held`` and the answer's usage into ``used``.

A reservation that is never settled (the proxy died mid-answer) stays held: it counts as spent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

DIMENSIONS = ("input_tokens", "output_tokens", "micro_usd", "requests")
Amounts = tuple[int, int, int, int]

SQLITE_TABLE = (
    "CREATE TABLE IF NOT EXISTS grant_budgets ("
    " grant_id TEXT NOT NULL, secret TEXT NOT NULL,"
    " used_in INTEGER NOT NULL DEFAULT 0, used_out INTEGER NOT NULL DEFAULT 0,"
    " used_usd INTEGER NOT NULL DEFAULT 0,"
    " held_in INTEGER NOT NULL DEFAULT 0, held_out INTEGER NOT NULL DEFAULT 0,"
    " held_usd INTEGER NOT NULL DEFAULT 0, held_req INTEGER NOT NULL DEFAULT 0,"
    # The grant's own, stricter caps, when it asked for less than the policy at issue.
    " own_in INTEGER, own_out INTEGER, own_usd INTEGER, own_req INTEGER,"
    " PRIMARY KEY (grant_id, secret)) STRICT"
)


def stricter_caps(policy: tuple[int | None, ...],
                  own: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """Each dimension's cap: the policy's, tightened by the grant's own where it has one."""
    return tuple(a if b is None else b if a is None else min(a, b)
                 for a, b in zip(policy, own, strict=True))


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """One (grant, secret)'s spending: used by answers, held by requests in flight."""

    used: tuple[int, ...]  # input tokens, output tokens, micro-dollars, 0
    held: tuple[int, ...]  # the same in flight, and the requests in flight
    own: tuple[int | None, ...] = (None, None, None, None)  # caps the grant asked for


def first_over(caps: tuple[int | None, ...], used: tuple[int, ...], held: tuple[int, ...],
               asked: tuple[int, ...]) -> str | None:
    """The first dimension the reservation would take past its cap, or None."""
    for name, cap, spent, holding, more in zip(DIMENSIONS, caps, used, held, asked, strict=True):
        if cap is not None and spent + holding + more > cap:
            return name
    return None


def sqlite_reserve(conn: sqlite3.Connection, grant_id: str, secret: str,
                   caps: tuple[int | None, ...], asked: Amounts) -> str | None:
    row = conn.execute("SELECT used_in, used_out, used_usd, 0, held_in, held_out, held_usd,"
                       " held_req, own_in, own_out, own_usd, own_req FROM grant_budgets"
                       " WHERE grant_id = ? AND secret = ?",
                       (grant_id, secret)).fetchone() or ((0,) * 8 + (None,) * 4)
    over = first_over(stricter_caps(caps, row[8:]), row[:4], row[4:8], asked)
    if over is not None:
        return over
    conn.execute("INSERT INTO grant_budgets (grant_id, secret, held_in, held_out, held_usd,"
                 " held_req) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (grant_id, secret) DO UPDATE"
                 " SET held_in = held_in + excluded.held_in,"
                 " held_out = held_out + excluded.held_out,"
                 " held_usd = held_usd + excluded.held_usd,"
                 " held_req = held_req + excluded.held_req", (grant_id, secret, *asked))
    return None


def sqlite_settle(conn: sqlite3.Connection, grant_id: str, secret: str,
                  held: Amounts, used: Amounts) -> None:
    conn.execute("UPDATE grant_budgets SET held_in = max(0, held_in - ?),"
                 " held_out = max(0, held_out - ?), held_usd = max(0, held_usd - ?),"
                 " held_req = max(0, held_req - ?),"
                 " used_in = used_in + ?, used_out = used_out + ?, used_usd = used_usd + ?"
                 " WHERE grant_id = ? AND secret = ?", (*held, *used[:3], grant_id, secret))


def sqlite_use(conn: sqlite3.Connection, grant_id: str) -> dict[str, BudgetUse]:
    rows = conn.execute("SELECT secret, used_in, used_out, used_usd, 0, held_in, held_out,"
                        " held_usd, held_req, own_in, own_out, own_usd, own_req"
                        " FROM grant_budgets WHERE grant_id = ?", (grant_id,)).fetchall()
    return {row[0]: BudgetUse(tuple(row[1:5]), tuple(row[5:9]), tuple(row[9:13]))
            for row in rows}


def sqlite_limit(conn: sqlite3.Connection, grant_id: str, secret: str,
                 own: tuple[int | None, ...]) -> None:
    """Record the grant's own caps (the caller checked each is no looser than the policy's)."""
    conn.execute("INSERT INTO grant_budgets (grant_id, secret, own_in, own_out, own_usd,"
                 " own_req) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (grant_id, secret) DO UPDATE"
                 " SET own_in = excluded.own_in, own_out = excluded.own_out,"
                 " own_usd = excluded.own_usd, own_req = excluded.own_req",
                 (grant_id, secret, *own))


# KEYS[1] the budget hash. ARGV: 4 caps ("" = none), 4 asked, expire-at ms. Returns "" when
# admitted, else the dimension over its cap.
REDIS_RESERVE = """
local names = {'input_tokens', 'output_tokens', 'micro_usd', 'requests'}
local used = redis.call('HMGET', KEYS[1], 'used_in', 'used_out', 'used_usd', 'used_req')
local held = redis.call('HMGET', KEYS[1], 'held_in', 'held_out', 'held_usd', 'held_req')
local own = redis.call('HMGET', KEYS[1], 'own_in', 'own_out', 'own_usd', 'own_req')
for i = 1, 4 do
  local cap = nil
  if ARGV[i] ~= '' then cap = tonumber(ARGV[i]) end
  if own[i] and (cap == nil or tonumber(own[i]) < cap) then cap = tonumber(own[i]) end
  if cap ~= nil then
    local total = tonumber(used[i] or '0') + tonumber(held[i] or '0') + tonumber(ARGV[i + 4])
    if total > cap then return names[i] end
  end
end
redis.call('HINCRBY', KEYS[1], 'held_in', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'held_out', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'held_usd', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'held_req', ARGV[8])
redis.call('PEXPIREAT', KEYS[1], ARGV[9])
return ''
"""

# KEYS[1] the budget hash. ARGV: 4 held to release, 3 used to add (requests are never "used").
REDIS_SETTLE = """
local fields = {'held_in', 'held_out', 'held_usd', 'held_req'}
for i = 1, 4 do
  local left = tonumber(redis.call('HGET', KEYS[1], fields[i]) or '0') - tonumber(ARGV[i])
  if left < 0 then left = 0 end
  redis.call('HSET', KEYS[1], fields[i], left)
end
redis.call('HINCRBY', KEYS[1], 'used_in', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'used_out', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'used_usd', ARGV[7])
return 1
"""
