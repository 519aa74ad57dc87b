"""LLM token and cost budgets per grant, held in the grant store beside the rate buckets.

Per (grant, secret): what answers have used (``used_*``) and what requests in flight have
reserved (``held_*``), in input tokens, output tokens and micro-dollars. Admitting a request
checks ``used + held + its reservation <= cap`` for each capped dimension and adds the
reservation to ``held`` in one store step (an IMMEDIATE transaction in SQLite, one Lua script in
Redis), so workers and replicas never admit more than the caps allow; settling moves the
reservation out of ``held`` and the answer's usage into ``used``.

A reservation that is never settled (the proxy died mid-answer) stays held: it counts as spent.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

DIMENSIONS = ("input_tokens", "output_tokens", "micro_usd")

SQLITE_TABLE = (
    "CREATE TABLE IF NOT EXISTS grant_budgets ("
    " grant_id TEXT NOT NULL, secret TEXT NOT NULL,"
    " used_in INTEGER NOT NULL DEFAULT 0, used_out INTEGER NOT NULL DEFAULT 0,"
    " used_usd INTEGER NOT NULL DEFAULT 0,"
    " held_in INTEGER NOT NULL DEFAULT 0, held_out INTEGER NOT NULL DEFAULT 0,"
    " held_usd INTEGER NOT NULL DEFAULT 0,"
    " PRIMARY KEY (grant_id, secret)) STRICT"
)


@dataclass(frozen=True, slots=True)
class BudgetUse:
    """One (grant, secret)'s spending: used by answers, held by requests in flight."""

    used: tuple[int, int, int]  # input tokens, output tokens, micro-dollars
    held: tuple[int, int, int]


def first_over(caps: tuple[int | None, ...], used: tuple[int, ...], held: tuple[int, ...],
               asked: tuple[int, ...]) -> str | None:
    """The first dimension the reservation would take past its cap, or None."""
    for name, cap, spent, holding, more in zip(DIMENSIONS, caps, used, held, asked, strict=True):
        if cap is not None and spent + holding + more > cap:
            return name
    return None


def sqlite_reserve(conn: sqlite3.Connection, grant_id: str, secret: str,
                   caps: tuple[int | None, ...], asked: tuple[int, int, int]) -> str | None:
    row = conn.execute("SELECT used_in, used_out, used_usd, held_in, held_out, held_usd"
                       " FROM grant_budgets WHERE grant_id = ? AND secret = ?",
                       (grant_id, secret)).fetchone() or (0,) * 6
    over = first_over(caps, row[:3], row[3:], asked)
    if over is not None:
        return over
    conn.execute("INSERT INTO grant_budgets (grant_id, secret, held_in, held_out, held_usd)"
                 " VALUES (?, ?, ?, ?, ?) ON CONFLICT (grant_id, secret) DO UPDATE SET"
                 " held_in = held_in + excluded.held_in, held_out = held_out + excluded.held_out,"
                 " held_usd = held_usd + excluded.held_usd", (grant_id, secret, *asked))
    return None


def sqlite_settle(conn: sqlite3.Connection, grant_id: str, secret: str,
                  held: tuple[int, int, int], used: tuple[int, int, int]) -> None:
    conn.execute("UPDATE grant_budgets SET held_in = max(0, held_in - ?),"
                 " held_out = max(0, held_out - ?), held_usd = max(0, held_usd - ?),"
                 " used_in = used_in + ?, used_out = used_out + ?, used_usd = used_usd + ?"
                 " WHERE grant_id = ? AND secret = ?", (*held, *used, grant_id, secret))


def sqlite_use(conn: sqlite3.Connection, grant_id: str) -> dict[str, BudgetUse]:
    rows = conn.execute("SELECT secret, used_in, used_out, used_usd, held_in, held_out, held_usd"
                        " FROM grant_budgets WHERE grant_id = ?", (grant_id,)).fetchall()
    return {row[0]: BudgetUse(tuple(row[1:4]), tuple(row[4:7])) for row in rows}


# KEYS[1] the budget hash. ARGV: 3 caps ("" = none), 3 asked, expire-at ms. Returns "" when
# admitted, else the dimension over its cap.
REDIS_RESERVE = """
local names = {'input_tokens', 'output_tokens', 'micro_usd'}
local used = redis.call('HMGET', KEYS[1], 'used_in', 'used_out', 'used_usd')
local held = redis.call('HMGET', KEYS[1], 'held_in', 'held_out', 'held_usd')
for i = 1, 3 do
  if ARGV[i] ~= '' then
    local total = tonumber(used[i] or '0') + tonumber(held[i] or '0') + tonumber(ARGV[i + 3])
    if total > tonumber(ARGV[i]) then return names[i] end
  end
end
redis.call('HINCRBY', KEYS[1], 'held_in', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'held_out', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'held_usd', ARGV[6])
redis.call('PEXPIREAT', KEYS[1], ARGV[7])
return ''
"""

# KEYS[1] the budget hash. ARGV: 3 held to release, 3 used to add.
REDIS_SETTLE = """
local fields = {'held_in', 'held_out', 'held_usd'}
for i = 1, 3 do
  local left = tonumber(redis.call('HGET', KEYS[1], fields[i]) or '0') - tonumber(ARGV[i])
  if left < 0 then left = 0 end
  redis.call('HSET', KEYS[1], fields[i], left)
end
redis.call('HINCRBY', KEYS[1], 'used_in', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'used_out', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'used_usd', ARGV[6])
return 1
"""
