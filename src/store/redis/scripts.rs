//! The Lua scripts that make each session write atomic on the server.
//!
//! Every script touches exactly one key (its `KEYS[1]`), so each one runs on a
//! single Cluster slot. Work that spans keys (rotation, the per-user index) is
//! split into several scripts by the caller.
//!
//! Field/value lists are applied in chunks: `unpack` of a very long argument
//! list would overflow Lua's C stack (about 8000 slots).

use std::sync::LazyLock;

use deadpool_redis::redis::Script;

/// Shared chunked helpers, prepended to scripts that take variable-length lists.
const HELPERS: &str = r"
local function each_chunk(first, last, step, f)
  local i = first
  while i <= last do
    local j = math.min(i + step - 1, last)
    f(i, j)
    i = j + 1
  end
end
";

/// The session's size (bytes of keys and JSON text, `d:` prefixes not
/// counted) is kept in `m:sz` as `<m:v>:<bytes>`: a save adjusts it by what it
/// changes instead of reading every field. A count stamped with another
/// version than the hash's `m:v` was left behind by a writer that did not keep
/// it (a record from before sizes were counted, or an older release during a
/// rollback), and is recounted from the fields once.
///
/// `size_after(key, meta_v, meta_sz, first, last)` is the size once the
/// removed fields `ARGV[first..=last]` and the field/value pairs after them
/// are applied. Values are JSON text, never empty, so `HSTRLEN` 0 means absent.
const SIZE_HELPERS: &str = r"
local function full_size(key)
  local all = redis.call('HGETALL', key)
  local n = 0
  for i = 1, #all, 2 do
    if string.sub(all[i], 1, 2) == 'd:' then n = n + #all[i] - 2 + #all[i + 1] end
  end
  return n
end
local function counted(meta_v, meta_sz)
  if not meta_sz then return nil end
  local sv, sb = string.match(meta_sz, '^(%d+):(%d+)$')
  if sb and sv == meta_v then return tonumber(sb) end
  return nil
end
local function size_after(key, meta_v, meta_sz, first, last)
  local size = counted(meta_v, meta_sz) or full_size(key)
  for i = first, last do
    local l = redis.call('HSTRLEN', key, ARGV[i])
    if l > 0 then size = size - l - #ARGV[i] + 2 end
  end
  for i = last + 1, #ARGV, 2 do
    local l = redis.call('HSTRLEN', key, ARGV[i])
    if l > 0 then size = size - l - #ARGV[i] + 2 end
    size = size + #ARGV[i] - 2 + #ARGV[i + 1]
  end
  return size
end
";

/// `KEYS[1]` session hash; `ARGV[1]` expiry (ms since the epoch); `ARGV[2..]`
/// field/value pairs (metadata, `m:v` 1, `m:sz` stamped with version 1, and
/// data). Returns 1 when created, 0 when the key is taken. An expiry in the
/// past makes `PEXPIREAT` delete the key at once, so a record born expired
/// leaves nothing behind.
///
/// Three commands: `EXISTS`, one `HSET` (per 1000 arguments) and `PEXPIREAT`.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return 0 end
each_chunk(2, #ARGV, 1000, function(i, j) redis.call('HSET', key, unpack(ARGV, i, j)) end)
redis.call('PEXPIREAT', key, ARGV[1])
return 1
"
    ))
});

/// `KEYS[1]` session hash; `ARGV[1]` new expiry (ms); `ARGV[2]` user change
/// (`k`eep, `s`et, `c`lear); `ARGV[3]` new user (for `s`); `ARGV[4]` the user
/// index score the caller gave (for `s`) or would give (for `k`) this session;
/// `ARGV[5]` the size limit in bytes; `ARGV[6]` number of removed fields;
/// `ARGV[7]` `t` when the caller is the near cache's tracking connection;
/// then the removed fields, then field/value pairs to set. Every applied save
/// bumps the session's version `m:v`.
///
/// Returns `{1, version, rescore, previous user, current user}`, where
/// `rescore` is 1 when the session's user index entry (score recorded in
/// `m:iscore`) would expire before the session now does; a save that keeps the
/// user and needs no re-score returns only `{1, version}`. A missing key gives
/// `{0}` and is left missing, so a late save cannot resurrect a session. A save
/// that sets values and would take the session past the limit writes nothing
/// and gives `{2, size, limit}`; a hash in a stored format other than 1 (`m:fmt`) is not
/// touched and gives `{3, format}`.
///
/// A save that keeps the user runs three commands: one `HMGET` reads the
/// metadata and the changed fields' current values (what they add to the
/// session's size; `m:created` missing means the session is gone), one `HSET`
/// writes the values with `m:v`, `m:expires` and `m:sz`, and `PEXPIREAT`; an
/// `HDEL` is added when the save removes keys or the user. The new version is
/// `m:v + 1`, computed here rather than by `HINCRBY` and read back. (It was
/// eight commands, with one `HSTRLEN` per changed field.) Changed fields past
/// the first 1000 are read with one more `HMGET` per 1000.
///
/// For the near cache (`t`), a final read of `m:v` makes Redis track the key
/// again for the calling connection: a write drops a key from Redis's tracking
/// table, even for the `NOLOOP` connection of the near cache that made it, and
/// without this read the near cache would miss later invalidations.
pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}{SIZE_HELPERS}
local key = KEYS[1]
local removed_last = 7 + tonumber(ARGV[6])
local changed = {{}}
for i = 8, removed_last do changed[#changed + 1] = ARGV[i] end
for i = removed_last + 1, #ARGV, 2 do changed[#changed + 1] = ARGV[i] end
-- Every session hash has `m:created`: without it the session is gone.
local meta = redis.call('HMGET', key, 'm:created', 'm:user', 'm:v', 'm:sz', 'm:fmt', 'm:iscore',
  unpack(changed, 1, math.min(#changed, 1000)))
if not meta[1] then return {{0}} end
if meta[5] and meta[5] ~= '1' then return {{3, meta[5]}} end
local previous = meta[2]
local size = nil
if #changed > 0 then
  -- What the changed fields hold now (values are JSON text, never empty).
  local held = 0
  for i = 7, #meta do
    if meta[i] then held = held + #meta[i] + #changed[i - 6] - 2 end
  end
  each_chunk(1001, #changed, 1000, function(i, j)
    local values = redis.call('HMGET', key, unpack(changed, i, j))
    for k = 1, #values do
      if values[k] then held = held + #values[k] + #changed[i + k - 1] - 2 end
    end
  end)
  size = (counted(meta[3], meta[4]) or full_size(key)) - held
  for i = removed_last + 1, #ARGV, 2 do size = size + #ARGV[i] - 2 + #ARGV[i + 1] end
  if removed_last < #ARGV and size > tonumber(ARGV[5]) then return {{2, size, ARGV[5]}} end
else
  size = counted(meta[3], meta[4])
end
local v = (tonumber(meta[3]) or 0) + 1
local set = {{'m:v', v, 'm:expires', ARGV[1]}}
if size then
  set[#set + 1] = 'm:sz'
  set[#set + 1] = v .. ':' .. size
end
local current = previous
local rescore = 0
if ARGV[2] == 's' then
  set[#set + 1] = 'm:user'
  set[#set + 1] = ARGV[3]
  set[#set + 1] = 'm:iscore'
  set[#set + 1] = ARGV[4]
  current = ARGV[3]
elseif ARGV[2] == 'c' then
  redis.call('HDEL', key, 'm:user', 'm:iscore')
  current = false
elseif current and tonumber(ARGV[1]) > tonumber(meta[6] or '0') then
  rescore = 1
end
each_chunk(8, removed_last, 1000, function(i, j) redis.call('HDEL', key, unpack(ARGV, i, j)) end)
-- The metadata goes with the first 1000 values, in one HSET.
local first_last = math.min(removed_last + 1000, #ARGV)
for i = removed_last + 1, first_last do set[#set + 1] = ARGV[i] end
redis.call('HSET', key, unpack(set))
each_chunk(first_last + 1, #ARGV, 1000, function(i, j) redis.call('HSET', key, unpack(ARGV, i, j)) end)
redis.call('PEXPIREAT', key, ARGV[1])
if ARGV[7] == 't' then redis.call('HGET', key, 'm:v') end
-- The users matter to the caller only when they changed or the index entry
-- must be re-scored: the common save answers two values instead of five.
if ARGV[2] == 'k' and rescore == 0 then return {{1, v}} end
return {{1, v, rescore, previous, current}}
"
    ))
});

/// `KEYS[1]` session hash; `ARGV[1]` score. Records the score the session's
/// user index entry now has, unless the session is gone (never recreating it).
pub(super) static SET_INDEX_SCORE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'm:iscore', ARGV[1]) end
return 1
",
    )
});

/// `KEYS[1]` session hash; `ARGV[1]` the size limit, or -1 when the rotation
/// sets no value; `ARGV[2]` number of removed fields, then those fields, then
/// the field/value pairs the rotation sets. Reads the whole hash and deletes it
/// in one step: the first half of a rotation. Returns the flat field/value
/// list, empty when the session is gone; or, leaving the hash as it is,
/// `{'!', 'size', size}` when the rotated session would pass the limit and
/// `{'!', 'format', format}` for a stored format other than 1.
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{SIZE_HELPERS}
local key = KEYS[1]
local meta = redis.call('HMGET', key, 'm:fmt', 'm:v', 'm:sz')
if meta[1] and meta[1] ~= '1' then return {{'!', 'format', meta[1]}} end
if tonumber(ARGV[1]) >= 0 and redis.call('EXISTS', key) == 1 then
  local size = size_after(key, meta[2], meta[3], 3, 2 + tonumber(ARGV[2]))
  if size > tonumber(ARGV[1]) then return {{'!', 'size', tostring(size)}} end
end
local all = redis.call('HGETALL', key)
if #all > 0 then redis.call('DEL', key) end
return all
"
    ))
});

/// `KEYS[1]` session hash; `ARGV[1]` `a`ny or `u`ser; `ARGV[2]` the user that
/// must own the session for `u`. Returns `{deleted, user}`.
///
/// The `u` form lets "log out everywhere" trust nothing but the session itself:
/// an index entry left behind by a session that moved to another user can never
/// delete that user's session.
pub(super) static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return {0, false} end
local user = redis.call('HGET', key, 'm:user')
if ARGV[1] == 'u' and user ~= ARGV[2] then return {0, user} end
redis.call('DEL', key)
return {1, user}
",
    )
});

/// Trims the index's expired entries (`ARGV[1]` is now).
const INDEX_TRIM: &str = r"
redis.call('ZREMRANGEBYSCORE', idx, '-inf', ARGV[1])
";

/// Keeps the index key's own TTL at its latest member's expiry, so an index
/// can never outlive its sessions (the unbounded growth Spring Session's Redis
/// index is known for).
const INDEX_EXPIRY: &str = r"
local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
if #top > 0 then redis.call('PEXPIREAT', idx, top[2]) end
";

/// `KEYS[1]` user index (sorted set: storage key → expiry ms); `ARGV[1]` now
/// (ms); `ARGV[2]` expiry (ms); `ARGV[3]` storage key. Adds or re-scores it.
pub(super) static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "
local idx = KEYS[1]
if tonumber(ARGV[2]) > tonumber(ARGV[1]) then redis.call('ZADD', idx, ARGV[2], ARGV[3]) end
{INDEX_TRIM}{INDEX_EXPIRY}return #top"
    ))
});

/// `KEYS[1]` user index; `ARGV[1]` now (ms); `ARGV[2]` score; `ARGV[3]` the
/// storage key joining; `ARGV[4]` a storage key not to count (the one a
/// rotation leaves, or empty); `ARGV[5]` the cap; `ARGV[6]` `e`vict or
/// `r`efuse. Admits the key under the user's cap in one step: counts the
/// user's other entries and, at the cap, either refuses (`{'refused'}`, the
/// index unchanged) or drops the lowest-scored entries to make room. Then adds
/// the key and returns `{'ok', evicted keys...}`: the caller deletes those
/// sessions. The admission is atomic on the index key, so racing logins of one
/// user on any number of instances are counted one after another.
pub(super) static INDEX_ADMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "
local idx = KEYS[1]
{INDEX_TRIM}
local others = {{}}
for _, m in ipairs(redis.call('ZRANGE', idx, 0, -1)) do
  if m ~= ARGV[3] and m ~= ARGV[4] then others[#others + 1] = m end
end
local max = tonumber(ARGV[5])
local reply = {{'ok'}}
if #others >= max then
  if ARGV[6] == 'r' then return {{'refused'}} end
  for i = 1, #others - max + 1 do
    redis.call('ZREM', idx, others[i])
    reply[#reply + 1] = others[i]
  end
end
if tonumber(ARGV[2]) > tonumber(ARGV[1]) then redis.call('ZADD', idx, ARGV[2], ARGV[3]) end
{INDEX_EXPIRY}
return reply
"
    ))
});

/// `KEYS[1]` user index; `ARGV[1]` now (ms); `ARGV[2..]` storage keys to drop.
pub(super) static INDEX_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}
local idx = KEYS[1]
each_chunk(2, #ARGV, 1000, function(i, j) redis.call('ZREM', idx, unpack(ARGV, i, j)) end)
{INDEX_TRIM}{INDEX_EXPIRY}return #top"
    ))
});
