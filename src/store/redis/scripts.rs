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

/// `KEYS[1]` session hash; `ARGV[1]` expiry (ms since the epoch); `ARGV[2..]`
/// field/value pairs (metadata and data). Returns 1 when created, 0 when the key
/// is taken. An expiry in the past makes `PEXPIREAT` delete the key at once, so a
/// record born expired leaves nothing behind.
pub(super) static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then return 0 end
each_chunk(2, #ARGV, 1000, function(i, j) redis.call('HSET', key, unpack(ARGV, i, j)) end)
redis.call('HSET', key, 'm:v', 1)
redis.call('PEXPIREAT', key, ARGV[1])
return 1
"
    ))
});

/// `KEYS[1]` session hash; `ARGV[1]` new expiry (ms); `ARGV[2]` user change
/// (`k`eep, `s`et, `c`lear); `ARGV[3]` new user (for `s`); `ARGV[4]` the user
/// index score the caller gave (for `s`) or would give (for `k`) this session;
/// `ARGV[5]` number of removed fields, then those fields, then field/value pairs
/// to set. Every applied save bumps the session's version `m:v`.
///
/// Returns `{1, previous user, current user, version, rescore}`, where `rescore`
/// is 1 when the session's user index entry (score recorded in `m:iscore`) would
/// expire before the session now does; a missing key gives `{0, nil, nil}` and
/// is left missing, so a late save cannot resurrect a session.
///
/// The final read of `m:v` also makes Redis track the key again for the calling
/// connection: a write drops a key from Redis's tracking table, even for the
/// `NOLOOP` connection of the near cache that made it, and without this read
/// the near cache would miss later invalidations.
pub(super) static SAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}
local key = KEYS[1]
if redis.call('EXISTS', key) == 0 then return {{0, false, false}} end
local previous = redis.call('HGET', key, 'm:user')
local removed_last = 5 + tonumber(ARGV[5])
each_chunk(6, removed_last, 1000, function(i, j) redis.call('HDEL', key, unpack(ARGV, i, j)) end)
each_chunk(removed_last + 1, #ARGV, 1000, function(i, j) redis.call('HSET', key, unpack(ARGV, i, j)) end)
local current = previous
local rescore = 0
if ARGV[2] == 's' then
  redis.call('HSET', key, 'm:user', ARGV[3], 'm:iscore', ARGV[4])
  current = ARGV[3]
elseif ARGV[2] == 'c' then
  redis.call('HDEL', key, 'm:user', 'm:iscore')
  current = false
elseif current and tonumber(ARGV[1]) > tonumber(redis.call('HGET', key, 'm:iscore') or '0') then
  rescore = 1
end
redis.call('HSET', key, 'm:expires', ARGV[1])
redis.call('HINCRBY', key, 'm:v', 1)
redis.call('PEXPIREAT', key, ARGV[1])
return {{1, previous, current, redis.call('HGET', key, 'm:v'), rescore}}
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

/// `KEYS[1]` session hash. Reads the whole hash and deletes it in one step:
/// the first half of a rotation. Returns the flat field/value list, empty when
/// the session is gone.
pub(super) static TAKE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local all = redis.call('HGETALL', KEYS[1])
if #all > 0 then redis.call('DEL', KEYS[1]) end
return all
",
    )
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

/// Trims expired entries and keeps the index key's own TTL at its latest
/// member's expiry, so an index can never outlive its sessions (the unbounded
/// growth Spring Session's Redis index is known for).
const INDEX_TAIL: &str = r"
redis.call('ZREMRANGEBYSCORE', idx, '-inf', ARGV[1])
local top = redis.call('ZRANGE', idx, -1, -1, 'WITHSCORES')
if #top > 0 then redis.call('PEXPIREAT', idx, top[2]) end
return #top
";

/// `KEYS[1]` user index (sorted set: storage key → expiry ms); `ARGV[1]` now
/// (ms); `ARGV[2]` expiry (ms); `ARGV[3]` storage key. Adds or re-scores it.
pub(super) static INDEX_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "
local idx = KEYS[1]
if tonumber(ARGV[2]) > tonumber(ARGV[1]) then redis.call('ZADD', idx, ARGV[2], ARGV[3]) end
{INDEX_TAIL}"
    ))
});

/// `KEYS[1]` user index; `ARGV[1]` now (ms); `ARGV[2..]` storage keys to drop.
pub(super) static INDEX_REMOVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{HELPERS}
local idx = KEYS[1]
each_chunk(2, #ARGV, 1000, function(i, j) redis.call('ZREM', idx, unpack(ARGV, i, j)) end)
{INDEX_TAIL}"
    ))
});
