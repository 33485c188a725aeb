//! The server-side scripts. Each touches one Redis key (a key's hash, or the catalog hash), so in
//! a Redis Cluster each runs on the one master owning that key's slot, atomically.
//!
//! Lua numbers are doubles: every quantity here (microseconds since 1970, token counts, month ids)
//! stays below 2^53, where doubles are exact integers, and numbers are written back with
//! `string.format('%d')` (through a C `long`, exact for them, and cheaper than `'%.0f'`) so that
//! none is ever stored in exponent form. The bucket math is the one of `engine::bucket::evaluate`,
//! in microseconds; the node recomputes the figures from the state the script returns with the
//! Rust function, so both stores render the same decision.

/// One check (exact mode: `want` = cost) or one lease (lease mode: `want` = the lease size).
///
/// `KEYS[1]`: the key's hash, or its consumer group's (a tier counting by consumer). `ARGV`: record
/// version the node holds (empty for a group's hash, which holds no record: the node reads the
/// version beside the call), now (µs), cost, want, month id, quota (-1 = none), number of limits
/// n, then n × (period s, interval µs, requests).
///
/// Returns `{0}` when the key does not exist, `{1, version}` when the node's copy of the record
/// is stale (nothing consumed: the node refreshes and asks again), else
/// `{2, granted, used, tat_1..tat_n}`: the state *before* this request (buckets re-expressed in
/// the current limits) and how many tokens were taken (0 = denied, nothing written).
///
/// Granting: `avail` = the fewest tokens any limit or the quota has left. Denied when
/// `avail < cost`; else `granted = min(want, max(cost, floor(avail / 4)))`: a lease shrinks as a
/// limit nears exhaustion, down to just the request's cost.
pub const CHECK: &str = r#"
local k = KEYS[1]
local old = redis.call('HMGET', k, 'v', 'p1','i1','t1','p2','i2','t2','p3','i3','t3','p4','i4','t4','m','u')
local v = old[1]
if ARGV[1] ~= '' then
  if not v then return {0} end
  if v ~= ARGV[1] then return {1, tonumber(v)} end
end
local now = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local month = ARGV[5]
local quota = tonumber(ARGV[6])
local n = tonumber(ARGV[7])
local tats, ivs, pers = {}, {}, {}
-- The fewest tokens any limit or the quota has left (capped by `want` only after the quarter).
local avail = math.huge
for j = 1, n do
  local b = 7 + 3 * (j - 1)
  local p = ARGV[b + 1]
  local iv = tonumber(ARGV[b + 2])
  local cap = iv * tonumber(ARGV[b + 3])
  pers[j] = p
  ivs[j] = iv
  local t = 0
  for i = 0, 3 do
    if old[3 * i + 2] == p then
      local oi = tonumber(old[3 * i + 3])
      local ot = tonumber(old[3 * i + 4])
      if oi and ot and ot > now then
        if oi == iv then
          t = ot
        else
          t = now + math.floor((ot - now + oi - 1) / oi) * iv
        end
      end
    end
  end
  tats[j] = t
  local horizon = now + cap
  local base = t
  if base < now then base = now end
  if base > horizon then base = horizon end
  local a = math.floor((horizon - base) / iv)
  if a < avail then avail = a end
end
local used = 0
-- A stored month later than the node's clock keeps its usage and stays (months never go back).
local sm = tonumber(old[14])
if sm and sm >= tonumber(month) then
  used = tonumber(old[15]) or 0
  month = old[14]
end
if quota >= 0 then
  local a = quota - used
  if a < avail then avail = a end
end
local g = 0
if avail >= cost then
  g = math.floor(avail / 4)
  if g < cost then g = cost end
  if g > want then g = want end
  if g < cost then g = cost end
end
if g > 0 then
  local f = {}
  for j = 1, n do
    local base = tats[j]
    if base < now then base = now end
    local iv = string.format('%d', ivs[j])
    -- Period and interval are written only when they change (a new key, a tier change).
    if old[3 * (j - 1) + 2] ~= pers[j] or old[3 * (j - 1) + 3] ~= iv then
      f[#f + 1] = 'p' .. j
      f[#f + 1] = pers[j]
      f[#f + 1] = 'i' .. j
      f[#f + 1] = iv
    end
    f[#f + 1] = 't' .. j
    f[#f + 1] = string.format('%d', base + g * ivs[j])
  end
  for j = n + 1, 4 do
    if old[3 * (j - 1) + 2] then
      redis.call('HDEL', k, 'p' .. j, 'i' .. j, 't' .. j)
    end
  end
  f[#f + 1] = 'm'
  f[#f + 1] = month
  f[#f + 1] = 'u'
  f[#f + 1] = string.format('%d', used + g)
  f[#f + 1] = 'lu'
  f[#f + 1] = string.format('%d', math.floor(now / 1000000))
  redis.call('HSET', k, unpack(f))
end
local out = {2, g, used}
for j = 1, n do out[#out + 1] = tats[j] end
return out
"#;

/// Gives back the unused part of a lease: `KEYS[1]` the key's hash; `ARGV`: tokens, month id, n,
/// then n × (period s, interval µs). Each bucket still on the same limit moves back by
/// `tokens × interval`; the month's usage drops by `tokens` if the month is the same.
pub const RETURN: &str = r#"
local k = KEYS[1]
if redis.call('EXISTS', k) == 0 then return 0 end
local r = tonumber(ARGV[1])
local month = ARGV[2]
local n = tonumber(ARGV[3])
for j = 1, n do
  local p = ARGV[3 + 2 * (j - 1) + 1]
  local iv = ARGV[3 + 2 * (j - 1) + 2]
  for i = 1, 4 do
    local s = redis.call('HMGET', k, 'p' .. i, 'i' .. i, 't' .. i)
    if s[1] == p and s[2] == iv and s[3] then
      local t = tonumber(s[3]) - r * tonumber(iv)
      if t < 0 then t = 0 end
      redis.call('HSET', k, 't' .. i, string.format('%d', t))
    end
  end
end
local s = redis.call('HMGET', k, 'm', 'u')
if s[1] == month and s[2] then
  local u = tonumber(s[2]) - r
  if u < 0 then u = 0 end
  redis.call('HSET', k, 'u', string.format('%d', u))
end
return 1
"#;

/// An operator's reset of a key's counters. `KEYS[1]`: the key's hash (or its consumer group's,
/// with an empty key id); `ARGV`: the key id,
/// `1` to set every burst bucket to full (TAT 0), `1` to set the month's usage to 0. Returns 1,
/// or 0 when the hash holds no such key.
pub const RESET: &str = r#"
local k = KEYS[1]
if ARGV[1] ~= '' and redis.call('HGET', k, 'id') ~= ARGV[1] then return 0 end
if ARGV[2] == '1' then
  for i = 1, 4 do
    if redis.call('HEXISTS', k, 't' .. i) == 1 then redis.call('HSET', k, 't' .. i, '0') end
  end
end
if ARGV[3] == '1' and redis.call('HEXISTS', k, 'u') == 1 then redis.call('HSET', k, 'u', '0') end
return 1
"#;

/// Deletes a key record (and its counters, in the same hash) if its version is the expected one.
/// `KEYS[1]`: the hash; `ARGV[1]`: expected version. Returns 1, -1 when the key does not exist,
/// -2 when another node changed it first.
pub const DELETE_RECORD: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if v ~= ARGV[1] then return -2 end
redis.call('DEL', KEYS[1])
return 1
"#;

/// Writes fields of a key record if its version is the expected one, bumping the version.
/// `KEYS[1]`: the hash; `ARGV[1]`: expected version; then field/value pairs. Returns the new
/// version, -1 when the key does not exist, -2 when another node changed it first.
pub const UPDATE_RECORD: &str = r#"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then return -1 end
if v ~= ARGV[1] then return -2 end
local nv = tonumber(v) + 1
redis.call('HSET', KEYS[1], 'v', string.format('%d', nv), unpack(ARGV, 2))
return nv
"#;

/// Replaces the catalog if its revision is the expected one. `KEYS[1]`: the catalog hash;
/// `ARGV[1]`: expected revision (`0` for none yet), `ARGV[2]`: the JSON document. Returns the new
/// revision, or -1 when another node changed it first.
pub const PUT_CATALOG: &str = r#"
local r = redis.call('HGET', KEYS[1], 'rev') or '0'
if r ~= ARGV[1] then return -1 end
local nr = tonumber(r) + 1
redis.call('HSET', KEYS[1], 'rev', string.format('%d', nr), 'doc', ARGV[2])
return nr
"#;
