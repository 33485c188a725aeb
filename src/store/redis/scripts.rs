//! The server-side scripts. Each touches one Redis key (a key's hash, or the catalog hash), so in
//! a Redis Cluster each runs on the one master owning that key's slot, atomically; except
//! [`CHECK_MANY`], which runs the check on several keys of one master.
//!
//! Lua numbers are doubles: every quantity here (microseconds since 1970, token counts, month ids)
//! stays below 2^53, where doubles are exact integers. Counters and the check's numbers travel as
//! packed little-endian 64-bit integers (`struct.pack`/`struct.unpack`, the layout of `layout.rs`):
//! exact, and far cheaper on the master than decimal text through `tonumber` and
//! `string.format`. The bucket math is the one of `engine::bucket::evaluate`, in microseconds;
//! the node recomputes the figures from the state the script returns with the Rust function, so
//! both stores render the same decision.

/// The body of [`CHECK`] as a Lua function of the key's hash `k` and the three arguments.
macro_rules! check_fn {
    () => {
        r#"
local function check(k, ver, a, sig)
  local old = redis.call('HMGET', k, 'v', 'L', 'c')
  local v = old[1]
  if ver ~= '' then
    if not v then return {0} end
    if v ~= ver then return {1, tonumber(v)} end
  end
  local n = (#a - 40) / 16
  local now, cost, want, month, quota = struct.unpack('<i8i8i8i8i8', a)
  -- The stored state: the month's usage, each bucket's TAT (ot) under the limits ol.
  local used, ot, ol, legacy = 0, {}, old[2], false
  local c = old[3]
  if c then
    local s = {struct.unpack('<' .. string.rep('i8', #c / 8), c)}
    -- A stored month later than the node's clock keeps its usage and stays (months never go back).
    if s[1] >= month then
      used = s[2]
      month = s[1]
    end
    for i = 4, #c / 8 do ot[i - 3] = s[i] end
  else
    local l = redis.call('HMGET', k, 'm', 'u', 'p1', 'i1', 't1', 'p2', 'i2', 't2', 'p3', 'i3', 't3', 'p4', 'i4', 't4')
    local sm = tonumber(l[1])
    if sm and sm >= month then
      used = tonumber(l[2]) or 0
      month = sm
    end
    local parts = {}
    for i = 0, 3 do
      if l[3 * i + 3] and l[3 * i + 4] then
        parts[#parts + 1] = l[3 * i + 3] .. ':' .. l[3 * i + 4]
        ot[#parts] = tonumber(l[3 * i + 5]) or 0
      end
    end
    legacy = sm ~= nil or #parts > 0
    if legacy then ol = table.concat(parts, ',') end
  end
  -- Written under other limits (a tier change): each bucket whose period is unchanged keeps the
  -- tokens it owed, counted in the new interval; the others start full.
  local same = ol == sig
  local op, oi, np
  if not same and ol then
    op, oi, np = {}, {}, {}
    for p, i in string.gmatch(ol, '(%d+):(%d+)') do
      op[#op + 1] = p
      oi[#oi + 1] = tonumber(i)
    end
    for p in string.gmatch(sig, '(%d+):') do np[#np + 1] = p end
  end
  local tats, ivs = {}, {}
  local avail = math.huge
  for j = 1, n do
    local iv, cap = struct.unpack('<i8i8', a, 25 + 16 * j)
    ivs[j] = iv
    local t = 0
    if same then
      t = ot[j] or 0
    elseif op then
      for i = 1, #op do
        if op[i] == np[j] then
          t = ot[i] or 0
          if t > now and oi[i] ~= iv then
            t = now + math.floor((t - now + oi[i] - 1) / oi[i]) * iv
          end
        end
      end
    end
    if t <= now then t = 0 end
    tats[j] = t
    local horizon = now + cap
    local base = t
    if base < now then base = now end
    if base > horizon then base = horizon end
    local x = math.floor((horizon - base) / iv)
    if x < avail then avail = x end
  end
  if quota >= 0 and quota - used < avail then avail = quota - used end
  local g = 0
  if avail >= cost then
    g = math.floor(avail / 4)
    if g > want then g = want end
    if g < cost then g = cost end
  end
  if g > 0 then
    local nt = {month, used + g, math.floor(now / 1000000)}
    for j = 1, n do
      local base = tats[j]
      if base < now then base = now end
      nt[3 + j] = base + g * ivs[j]
    end
    local f = struct.pack('<' .. string.rep('i8', n + 3), unpack(nt))
    if same and not legacy then
      redis.call('HSET', k, 'c', f)
    else
      redis.call('HSET', k, 'c', f, 'L', sig)
    end
    if legacy then
      redis.call('HDEL', k, 'm', 'u', 'lu', 'p1', 'i1', 't1', 'p2', 'i2', 't2', 'p3', 'i3', 't3', 'p4', 'i4', 't4')
    end
  end
  return {2, g, used, unpack(tats, 1, n)}
end
"#
    };
}

/// One check (exact mode: `want` = cost) or one lease (lease mode: `want` = the lease size).
///
/// `KEYS[1]`: the key's hash, or its consumer group's (a tier counting by consumer). `ARGV`: the
/// record version the node holds (empty for a group's hash, which holds no record: the node reads
/// the version beside the call); the packed numbers now (µs), cost, want, month id, quota (-1 =
/// none), then interval (µs) and capacity (µs) of each of the n limits; the limits signature
/// (`period:interval,…`).
///
/// Returns `{0}` when the key does not exist, `{1, version}` when the node's copy of the record
/// is stale (nothing consumed: the node refreshes and asks again), else
/// `{2, granted, used, tat_1..tat_n}`: the state *before* this request (buckets re-expressed in
/// the current limits, as `engine::limits::reexpress_buckets` does) and how many tokens were
/// taken (0 = denied, nothing written).
///
/// Granting: `avail` = the fewest tokens any limit or the quota has left. Denied when
/// `avail < cost`; else `granted = min(want, max(cost, floor(avail / 4)))`: a lease shrinks as a
/// limit nears exhaustion, down to just the request's cost.
///
/// A hash still in the decimal layout of earlier versions (`p/i/t1..4`, `m`, `u`, `lu`) is read
/// as if its signature were its stored limits and rewritten packed by its first counted check.
pub const CHECK: &str = concat!(
    check_fn!(),
    "return check(KEYS[1], ARGV[1], ARGV[2], ARGV[3])\n"
);

/// The check of [`CHECK`] on several keys held by one master, in one call: the renewals of
/// leases a node tops up together (`renew.rs`). `KEYS[1]`: the first key's hash (it routes the
/// call); `ARGV`: for each key in turn its hash and the three arguments of [`CHECK`]. Returns one
/// reply of [`CHECK`] per key; `{4}` for a key this master does not hold (a slot moved: nothing
/// was read or written for it, and the node renews it on its own), `{3}` for a key whose check
/// failed otherwise.
///
/// In a Redis Cluster the keys' slots differ: a script flagged `allow-cross-slot-keys` (Redis
/// 7.0) may reach keys of other slots as long as this master holds them, which Redis checks on
/// each access (the first access of a check is its read).
pub const CHECK_MANY: &str = concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    check_fn!(),
    r#"local r = {}
for i = 0, #ARGV / 4 - 1 do
  local ok, res = pcall(check, ARGV[4 * i + 1], ARGV[4 * i + 2], ARGV[4 * i + 3], ARGV[4 * i + 4])
  if ok then
    r[i + 1] = res
  elseif string.find(tostring(res), 'non local key', 1, true) then
    r[i + 1] = {4}
  else
    r[i + 1] = {3}
  end
end
return r
"#
);

/// Gives back the unused part of a lease: `KEYS[1]` the key's hash; `ARGV`: tokens and month id
/// packed, then the signature of the limits the lease was taken under. Each bucket still on the
/// same limit (period and interval) moves back by `tokens × interval`; the month's usage drops by
/// `tokens` if the month is the same. Returns 1, or 0 when the hash holds no counters.
pub const RETURN: &str = r#"
local k = KEYS[1]
local old = redis.call('HMGET', k, 'L', 'c')
local c = old[2]
if not c then return 0 end
local r, month = struct.unpack('<i8i8', ARGV[1])
local m = #c / 8
local s = {struct.unpack('<' .. string.rep('i8', m), c)}
local back = {}
for l in string.gmatch(ARGV[2], '[^,]+') do back[l] = true end
local i = 3
for l in string.gmatch(old[1] or '', '[^,]+') do
  i = i + 1
  if back[l] and i <= m then
    local t = s[i] - r * tonumber(string.match(l, ':(%d+)$'))
    if t < 0 then t = 0 end
    s[i] = t
  end
end
if s[1] == month then
  local u = s[2] - r
  if u < 0 then u = 0 end
  s[2] = u
end
redis.call('HSET', k, 'c', struct.pack('<' .. string.rep('i8', m), unpack(s, 1, m)))
return 1
"#;

/// An operator's reset of a key's counters. `KEYS[1]`: the key's hash (or its consumer group's,
/// with an empty key id); `ARGV`: the key id,
/// `1` to set every burst bucket to full (TAT 0), `1` to set the month's usage to 0. Returns 1,
/// or 0 when the hash holds no such key. Hashes in the decimal layout are reset in place.
pub const RESET: &str = r#"
local k = KEYS[1]
if ARGV[1] ~= '' and redis.call('HGET', k, 'id') ~= ARGV[1] then return 0 end
local c = redis.call('HGET', k, 'c')
if c then
  local m = #c / 8
  local s = {struct.unpack('<' .. string.rep('i8', m), c)}
  if ARGV[2] == '1' then
    for i = 4, m do s[i] = 0 end
  end
  if ARGV[3] == '1' and m >= 2 then s[2] = 0 end
  redis.call('HSET', k, 'c', struct.pack('<' .. string.rep('i8', m), unpack(s, 1, m)))
end
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
