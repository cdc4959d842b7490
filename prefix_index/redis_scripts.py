"""Lua scripts of the Redis index (each runs atomically, server-side, in one round trip).

Layout (P = key prefix, W = worker id, E = its epoch, NS = namespace; "\\0" separates parts):
  P:epoch             hash   W → current epoch (decimal)
  P:lease:W           string E, with the lease TTL
  P:keys:W            set    namespaces where W has entries (so clearing a worker is cheap)
  P:ns:NS             set    workers with entries in NS (lookup candidates)
  P:w:NS\\0W\\0E        hash   block hash (8 big-endian bytes) → flags: 1 = holds the block,
                             2 = holds a state checkpoint at its end
The epoch is part of the entry key, so a new epoch never sees an old one's entries; those are
deleted when the epoch changes. A lookup deletes the entries of a worker whose lease has lapsed
(lazy cleanup: its client republishes them when its heartbeat finds the lease gone).
Keys are computed inside the scripts: one standalone Redis (or a single-shard setup), not Cluster.

Redis may hold anything (an operator's typo, a stranger with the password): the worker-side scripts
replace a key of the wrong type that they own or rebuild (`repair`), an epoch that is not a decimal
or lies beyond the caller's sanity bound is reset, and the lookup reads only the candidate workers
it is given, in bounded batches, so a set of 20,000 fake workers costs it nothing.
"""

_COMMON = """
local P = ARGV[1]
local function older(a, b)  -- epochs as decimal strings: exact beyond 2^53, unlike Lua numbers
  if #a ~= #b then return #a < #b end
  return a < b
end
local function entries_key(ns, w, e) return P .. ':w:' .. ns .. '\\0' .. w .. '\\0' .. e end
local function drop_entries(w, e)  -- every namespace's entries of worker w at epoch e
  local keyset = P .. ':keys:' .. w
  for _, ns in ipairs(redis.call('SMEMBERS', keyset)) do
    redis.call('UNLINK', entries_key(ns, w, e))
    redis.call('SREM', P .. ':ns:' .. ns, w)
  end
  redis.call('DEL', keyset)
end
local function repair(key, want)  -- a key of the wrong type is replaced (it is rebuilt by its owner)
  local t = redis.call('TYPE', key).ok
  if t ~= 'none' and t ~= want then redis.call('DEL', key); return true end
  return false
end
local function sane(cur, limit)  -- a decimal epoch, no larger than `limit` (when one is given)
  if not string.match(cur, '^%d+$') then return false end
  return limit == nil or limit == '' or not older(limit, cur)
end
local function enter_epoch(w, e, limit)  -- false for a stale epoch; a newer one drops the old entries
  local cur = redis.call('HGET', P .. ':epoch', w)
  local reset = false
  if cur and not sane(cur, limit) then  -- absurd (garbage, or 10^30): reset, as if never set
    drop_entries(w, cur)
    redis.call('HDEL', P .. ':epoch', w)
    cur, reset = false, true
  end
  if cur and older(e, cur) then return false end
  if cur ~= e then
    if cur then drop_entries(w, cur) end
    redis.call('HSET', P .. ':epoch', w, e)
  end
  if reset then return 'reset' end
  return true
end
"""

# ARGV: P, worker, epoch, namespace, then per event: kind ("s" | "r"), packed block hashes,
# packed checkpoint hashes.  Returns 0 for a stale epoch, else 1.
PUBLISH = (
    _COMMON
    + """
local w, e, ns = ARGV[2], ARGV[3], ARGV[4]
repair(P .. ':epoch', 'hash')
if not enter_epoch(w, e) then return 0 end
repair(P .. ':keys:' .. w, 'set')
repair(P .. ':ns:' .. ns, 'set')
redis.call('SADD', P .. ':keys:' .. w, ns)
redis.call('SADD', P .. ':ns:' .. ns, w)
local key = entries_key(ns, w, e)
repair(key, 'hash')
local CHUNK = 2000  -- keeps unpack() within Lua's stack limit
for a = 5, #ARGV, 3 do
  local stored = ARGV[a] == 's'
  for mask = 1, 2 do
    local packed = ARGV[a + mask]
    for start = 1, #packed, 8 * CHUNK do
      local fields = {}
      for j = start, math.min(#packed, start + 8 * CHUNK - 1), 8 do
        fields[#fields + 1] = string.sub(packed, j, j + 7)
      end
      local olds = redis.call('HMGET', key, unpack(fields))
      local sets, dels = {}, {}
      for j, f in ipairs(fields) do
        local old = tonumber(olds[j]) or 0
        local new
        if stored then new = bit.bor(old, mask) else new = bit.band(old, bit.bnot(mask)) end
        if new == 0 then
          if olds[j] then dels[#dels + 1] = f end
        elseif new ~= old then
          sets[#sets + 1] = f; sets[#sets + 1] = new
        end
      end
      if #sets > 0 then redis.call('HSET', key, unpack(sets)) end
      if #dels > 0 then redis.call('HDEL', key, unpack(dels)) end
    end
  end
end
return 1
"""
)

# ARGV: P, worker, epoch, ttl ms, the largest sane epoch ('' = no bound: garbage is still reset).
# Returns -1 for a stale epoch, 1 when this epoch's lease was alive, 0 when it was (re)created,
# 2 when an absurd epoch was reset (and the lease created). Every key the worker's lease relies on is repaired first: the heartbeat is how a worker re-registers.
HEARTBEAT = (
    _COMMON
    + """
local w, e = ARGV[2], ARGV[3]
repair(P .. ':epoch', 'hash')
repair(P .. ':keys:' .. w, 'set')
repair(P .. ':lease:' .. w, 'string')
local entered = enter_epoch(w, e, ARGV[5])
if not entered then return -1 end
local old = redis.call('SET', P .. ':lease:' .. w, e, 'PX', ARGV[4], 'GET')
if entered == 'reset' then return 2 end
if old == e then return 1 end
return 0
"""
)

# ARGV: P, worker, "1" to forget the worker entirely (lease and epoch too) or "0" for its entries.
CLEAR = (
    _COMMON
    + """
local w = ARGV[2]
local e = redis.call('HGET', P .. ':epoch', w)
if e then drop_entries(w, e) end
if ARGV[3] == '1' then
  redis.call('DEL', P .. ':lease:' .. w)
  redis.call('HDEL', P .. ':epoch', w)
end
return 1
"""
)

# ARGV: P, namespace, packed block hashes, max workers, then the candidate worker ids (none: every
# worker in the namespace, at most `max workers` of them).  Returns a flat list worker, blocks,
# checkpoint_blocks for every live candidate holding at least the first block.  Each candidate's
# entries are read with HMGETs of doubling size, so a worker that misses early costs little and a
# long run few calls.
LOOKUP = (
    _COMMON
    + """
local ns, hashes, limit = ARGV[2], ARGV[3], tonumber(ARGV[4])
local nskey = P .. ':ns:' .. ns
local workers = {}
if #ARGV > 4 then
  for i = 5, math.min(#ARGV, 4 + limit) do workers[#workers + 1] = ARGV[i] end
elseif redis.call('SCARD', nskey) <= limit then
  workers = redis.call('SMEMBERS', nskey)
else
  workers = redis.call('SRANDMEMBER', nskey, limit)
end
if #workers == 0 then return {} end
local BATCH = 1000  -- keeps unpack() within Lua's stack limit
local epochs, leases = {}, {}
for first = 1, #workers, BATCH do
  local last = math.min(#workers, first + BATCH - 1)
  local lease_keys = {}
  for i = first, last do lease_keys[#lease_keys + 1] = P .. ':lease:' .. workers[i] end
  local es = redis.call('HMGET', P .. ':epoch', unpack(workers, first, last))
  local ls = redis.call('MGET', unpack(lease_keys))
  for i = 1, last - first + 1 do epochs[first + i - 1] = es[i]; leases[first + i - 1] = ls[i] end
end
local n = #hashes / 8
local fields, sliced = {}, 0  -- block hashes cut out of the packed string as far as needed
local function slice_to(last)
  for i = sliced + 1, last do fields[i] = string.sub(hashes, i * 8 - 7, i * 8) end
  if last > sliced then sliced = last end
end
local out = {}
for i, w in ipairs(workers) do
  local e, lease = epochs[i], leases[i]
  if not lease then  -- lapsed lease: clean up lazily
    redis.call('SREM', nskey, w)
    if e then redis.call('UNLINK', entries_key(ns, w, e)) end
  elseif lease == e and redis.call('SISMEMBER', nskey, w) == 1
      and redis.call('TYPE', entries_key(ns, w, e)).ok == 'hash' then
    local key = entries_key(ns, w, e)
    local pos, chunk, blocks, ckpt = 0, 16, -1, 0
    while blocks < 0 and pos < n do
      local last = math.min(n, pos + chunk)
      slice_to(last)
      local vals = redis.call('HMGET', key, unpack(fields, pos + 1, last))
      for j = 1, last - pos do
        local v = vals[j]
        if v == '3' then
          ckpt = pos + j
        elseif v ~= '1' then
          blocks = pos + j - 1
          break
        end
      end
      pos = last
      chunk = math.min(chunk * 2, 4096)
    end
    if blocks < 0 then blocks = n end
    if blocks > 0 then
      out[#out + 1] = w; out[#out + 1] = blocks; out[#out + 1] = ckpt
    end
  end
end
return out
"""
)
