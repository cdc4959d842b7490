"""Lua scripts of the Redis index (each runs atomically, server-side, in one round trip).

Layout (P = key prefix, W = worker id, H = a block hash as 8 big-endian bytes):
  P:epoch            hash   W → current epoch (decimal)
  P:lease:W          string epoch, with the lease TTL
  P:keys:W           set    block keys where W has an entry (so clearing a worker is cheap)
  P:b:<ns>:H         hash   W → "<epoch>:<flags>", flags 1 = holds the block, 2 = checkpoint at its end
An entry matches only if its epoch equals the worker's live lease; others are deleted lazily when a
lookup meets them at the first block, and in bulk when the worker's lease is renewed or cleared.
"""

# Epochs are decimal strings compared by (length, text): exact beyond 2^53, unlike Lua numbers.
_OLDER = """
local function older(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
"""

# KEYS: epoch registry, worker key set.  ARGV: worker, epoch, block key prefix, then per event
# kind ("s" | "r"), packed block hashes, packed checkpoint hashes.  Returns 0 for a stale epoch.
PUBLISH = (
    _OLDER
    + """
local worker, epoch, bprefix = ARGV[1], ARGV[2], ARGV[3]
local cur = redis.call('HGET', KEYS[1], worker)
if cur and older(epoch, cur) then return 0 end
if cur ~= epoch then redis.call('HSET', KEYS[1], worker, epoch) end
local mine = epoch .. ':'
local function update(key, mask, stored)
  local old = redis.call('HGET', key, worker)
  local flags = 0
  if old and string.sub(old, 1, #mine) == mine then flags = tonumber(string.sub(old, #mine + 1)) end
  local new
  if stored then new = bit.bor(flags, mask) else new = bit.band(flags, bit.bnot(mask)) end
  if new == 0 then
    if old then
      redis.call('HDEL', key, worker)
      redis.call('SREM', KEYS[2], key)
    end
  elseif mine .. new ~= old then
    redis.call('HSET', key, worker, mine .. new)
    if not old then redis.call('SADD', KEYS[2], key) end
  end
end
for e = 4, #ARGV, 3 do
  local stored = ARGV[e] == 's'
  for part = 1, 2 do
    local packed = ARGV[e + part]
    for j = 1, #packed, 8 do update(bprefix .. string.sub(packed, j, j + 7), part, stored) end
  end
end
return 1
"""
)

# KEYS: epoch registry, lease key.  ARGV: worker, epoch, ttl ms.
# Returns -1 for a stale epoch, 1 when this epoch's lease was alive, 0 when it was (re)created.
HEARTBEAT = (
    _OLDER
    + """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and older(ARGV[2], cur) then return -1 end
if cur ~= ARGV[2] then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) end
local old = redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'GET')
if old == ARGV[2] then return 1 end
return 0
"""
)

# KEYS: worker key set.  ARGV: worker, batch size.  Removes up to a batch of the worker's entries;
# the caller repeats until fewer than a batch come back (keeps each call short).
CLEAR_BATCH = """
local keys = redis.call('SPOP', KEYS[1], ARGV[2])
for _, k in ipairs(keys) do redis.call('HDEL', k, ARGV[1]) end
return #keys
"""

# ARGV: block key prefix, lease key prefix, packed block hashes.  Returns a flat list
# worker, blocks, checkpoint_blocks, ... for every live worker holding the first block.
LOOKUP = """
local bprefix, lprefix, hashes = ARGV[1], ARGV[2], ARGV[3]
local n = #hashes / 8
local key = bprefix .. string.sub(hashes, 1, 8)
local first = redis.call('HGETALL', key)
local active, plain, marked, ckpt, out = {}, {}, {}, {}, {}
for i = 1, #first, 2 do
  local w, v = first[i], first[i + 1]
  local e = redis.call('GET', lprefix .. w)
  if e and (v == e .. ':1' or v == e .. ':3') then
    active[#active + 1] = w
    plain[w], marked[w] = e .. ':1', e .. ':3'
    if v == marked[w] then ckpt[w] = 1 else ckpt[w] = 0 end
  elseif not e or string.sub(v, 1, #e + 1) ~= e .. ':' then
    redis.call('HDEL', key, w)
  end
end
local i = 1
while #active > 0 and i < n do
  local vals = redis.call('HMGET', bprefix .. string.sub(hashes, i * 8 + 1, i * 8 + 8), unpack(active))
  local still = {}
  for j = 1, #active do
    local w, v = active[j], vals[j]
    if v == plain[w] then
      still[#still + 1] = w
    elseif v == marked[w] then
      still[#still + 1] = w
      ckpt[w] = i + 1
    else
      out[#out + 1] = w; out[#out + 1] = i; out[#out + 1] = ckpt[w]
    end
  end
  active = still
  i = i + 1
end
for _, w in ipairs(active) do
  out[#out + 1] = w; out[#out + 1] = n; out[#out + 1] = ckpt[w]
end
return out
"""
