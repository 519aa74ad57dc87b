"""The Lua scripts of the Redis grant store: each judges a grant's state and changes it in one step.

Redis runs a script with nothing in between, so the check and the write cannot be split by
another replica: `max_uses` holds across replicas exactly as it holds across processes with
SQLite. `STATE_AT` is `Grant.state_at` written again in Lua; the shared contract tests run both
stores through the same cases so the two cannot drift apart unnoticed. The keys each script
names are laid out in redis_keys.py.
"""

# Lua numbers are doubles: microseconds since 1970 stay exact until about the year 2255.
STATE_AT = """
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

# KEYS: grant, then the INDEX_KEYS. ARGV: id, expires_at, retention (ms), then one score per
# index key ('' for "not in that index"), then field/value pairs.
CREATE = """
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
RESERVE = STATE_AT + """
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
RELEASE = """
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
TRANSITION = STATE_AT + """
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

# KEYS: the INDEX_KEYS, then one grant key per id. ARGV: ended_before, then the ids. Deletes
# only a grant whose end (its score in the ended index) is at or before ended_before.
PURGE = """
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
