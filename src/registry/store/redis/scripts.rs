//! The Lua scripts of the store: only what needs an atomic read-then-write on the server.

use std::sync::LazyLock;

use ::redis::Script;

/// The Lua the record scripts share, so a stored value is read one way: `json_of` (a JSON
/// object, or nil for anything else: missing, not JSON, not an object) and `record_of` (a
/// session record: an object naming its node). Only what needs an atomic read-then-write is a
/// script (the compare-and-deletes, the claim's compare-and-set, and listing ids in a node
/// index by the server's clock); registering, refreshing and removing are plain commands.
pub(super) const LUA_LIB: &str = r"
local function json_of(value)
  if not value then return nil end
  local ok, decoded = pcall(cjson.decode, value)
  if ok and type(decoded) == 'table' then return decoded end
  return nil
end
local function record_of(value)
  local record = json_of(value)
  if record and type(record['n']) == 'string' then return record end
  return nil
end
";

/// A script: [`LUA_LIB`] followed by `body`.
fn script(body: &str) -> Script {
    Script::new(&format!("{LUA_LIB}\n{body}"))
}

/// Single-key scripts (any topology).
///
/// `KEYS[1]` record key; `ARGV[1]` node, `ARGV[2]` incarnation. 1: deleted; 0: another
/// node's or incarnation's record, kept; -1: no record.
pub(super) static REMOVE_IF_OWNED: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local value = redis.call('GET', KEYS[1])
if not value then return -1 end
local record = record_of(value)
if record and record['n'] == ARGV[1] and record['i'] == ARGV[2] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` record key; `ARGV[1]` node, `ARGV[2]` current incarnation.
/// 1: deleted (the node's, another incarnation); 0: kept (current incarnation);
/// -1: gone or not the node's (drop it from the node's index).
pub(super) static REMOVE_IF_STALE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local record = record_of(redis.call('GET', KEYS[1]))
if not record or record['n'] ~= ARGV[1] then return -1 end
if record['i'] == ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
return 1
",
    )
});

/// `KEYS[1]` record key; `ARGV[1]` expected owner node, `ARGV[2]` its incarnation, `ARGV[3]`
/// the claimant's record (JSON), `ARGV[4]` TTL seconds. 1: claimed (the record replaced); 0:
/// no record; otherwise the value found (another owner's record, or something that is no
/// record), left alone.
pub(super) static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local value = redis.call('GET', KEYS[1])
if not value then return 0 end
local record = record_of(value)
if record and record['n'] == ARGV[1] and record['i'] == ARGV[2] then
  redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[4])
  return 1
end
return value
",
    )
});

/// `KEYS[1]` liveness key; `ARGV[1]` incarnation. 1: deleted; 0: no liveness record, or
/// another incarnation's (kept; so is a value that is no liveness record).
pub(super) static WITHDRAW: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
local live = json_of(redis.call('GET', KEYS[1]))
if live and type(live['s']) == 'string' and live['i'] == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
",
    )
});

/// `KEYS[1]` liveness key, `KEYS[2]` node index (one node: one slot). 1: the node has no
/// liveness record and lists no session (entries past their expiry are pruned first); 0:
/// otherwise.
pub(super) static RETIRABLE: LazyLock<Script> = LazyLock::new(|| {
    script(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. now)
if redis.call('ZCARD', KEYS[2]) > 0 then return 0 end
return 1
",
    )
});

/// `KEYS[1]` node index; `ARGV` pairs of TTL seconds and session id. Lists each id, scored by
/// the (server) time its record expires, then prunes the index and extends its expiry once.
pub(super) static INDEX_PUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- Scores are the unix time (server clock) at which the record expires; entries past it are
-- pruned, and the index lives at least as long as its newest entry.
local now, scored, longest = tonumber(redis.call('TIME')[1]), {}, 0
for a = 1, #ARGV, 2 do
  local ttl = tonumber(ARGV[a])
  scored[#scored + 1] = now + ttl
  scored[#scored + 1] = ARGV[a + 1]
  if ttl > longest then longest = ttl end
end
redis.call('ZADD', KEYS[1], unpack(scored))
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if redis.call('TTL', KEYS[1]) < longest then redis.call('EXPIRE', KEYS[1], longest) end
return 1
",
    )
});

/// The shared event log's write of one bucket (see `events.rs`). `KEYS[1]` the bucket hash;
/// `ARGV[1]` the ring size, `ARGV[2]` the hash's TTL in ms, then `id, ordinal, stream, seq,
/// last, data` per event. An event is kept only if its slot holds an older ordinal (a former
/// owner writing late never overwrites its successor). A session's top, `<id>:t` =
/// `<ordinal>:<seq>:<highest>`, names its standalone stream's newest event (kept by the same
/// rule) and the highest ordinal of any of its streams (which only grows). What is kept is
/// written with one `HSET`. Returns how many fields were written.
pub(super) static APPEND_EVENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ring = tonumber(ARGV[1])
local n = math.floor((#ARGV - 2) / 6)
if n < 1 then return 0 end
local function ord_of(value)
  return (value and tonumber(string.match(value, '^(%d+):'))) or -1
end
local fields, query, tops, tids = {}, {}, {}, {}
for j = 1, n do
  local b = 6 * j - 3
  local id, ord = ARGV[b], tonumber(ARGV[b + 1])
  fields[j] = id .. ':' .. (ord % ring)
  query[j] = fields[j]
  local t = tops[id]
  if t == nil then
    t = {-1, 0, -1}
    tops[id] = t
    tids[#tids + 1] = id
  end
  if ord > t[3] then t[3] = ord end
  if ARGV[b + 2] == '0' and ord > t[1] then
    t[1], t[2] = ord, tonumber(ARGV[b + 3])
  end
end
for k, id in ipairs(tids) do query[n + k] = id .. ':t' end
local current = redis.call('HMGET', KEYS[1], unpack(query))
local best, kept = {}, {}
for j = 1, n do
  local f = fields[j]
  if best[f] == nil then best[f] = ord_of(current[j]) end
  local b = 6 * j - 3
  local ord = tonumber(ARGV[b + 1])
  if ord > best[f] then
    best[f] = ord
    kept[f] = ARGV[b + 1] .. ':' .. ARGV[b + 2] .. ':' .. ARGV[b + 3] .. ':' .. ARGV[b + 4] .. ':' .. ARGV[b + 5]
  end
end
for k, id in ipairs(tids) do
  local t, now = tops[id], current[n + k]
  local o, q, h = -1, 0, -1
  if now then
    local a, b, c = string.match(now, '^(%d+):(%d+):?(%d*)$')
    o, q = tonumber(a) or -1, tonumber(b) or 0
    h = tonumber(c) or o
  end
  local changed = false
  if t[1] > o then o, q, changed = t[1], t[2], true end
  if t[3] > h then h, changed = t[3], true end
  if changed then
    kept[id .. ':t'] = string.format('%d:%d:%d', math.max(o, 0), q, math.max(h, 0))
  end
end
local args = {}
for f, v in pairs(kept) do
  args[#args + 1] = f
  args[#args + 1] = v
end
if #args > 0 then redis.call('HSET', KEYS[1], unpack(args)) end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return #args / 2
",
    )
});

/// The Lua the event log's read and delete share: `used(key, id, slots)`, the fields session
/// `id` can have written (its slots `0 ..= min(highest ordinal, slots - 1)`, whatever the ring
/// size, then its top `<id>:t`), or nil when it has logged nothing. A top without its highest
/// ordinal (`<ordinal>:<seq>`, written before it was kept) may have used every slot.
const USED_FIELDS: &str = r"
local function used(key, id, slots)
  local top = redis.call('HGET', key, id .. ':t')
  if not top then return nil end
  local last = slots - 1
  local high = tonumber(string.match(top, '^%d+:%d+:(%d+)$'))
  if high then last = math.min(high, last) end
  local fields = {}
  for s = 0, last do fields[#fields + 1] = id .. ':' .. s end
  fields[#fields + 1] = id .. ':t'
  return fields
end
";

/// The shared event log's read of one session (see `events.rs`). `KEYS[1]` the bucket hash;
/// `ARGV[1]` the session id, `ARGV[2]` the most slots a ring has. Returns the values of the
/// fields the session can have used (see [`USED_FIELDS`]: its slots, then its top), nothing
/// for a session that has logged nothing. So a session without events costs a lookup of one
/// field, not a read of the whole ring.
pub(super) static READ_EVENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{USED_FIELDS}{}",
        r"
local fields = used(KEYS[1], ARGV[1], tonumber(ARGV[2]))
if not fields then return {} end
return redis.call('HMGET', KEYS[1], unpack(fields))
"
    ))
});

/// Deletes the shared event logs of sessions of one bucket (see `events.rs`). `KEYS[1]` the
/// bucket hash; `ARGV[1]` the most slots a ring has, then the session ids. One `HDEL` of the
/// fields each session can have used (see [`USED_FIELDS`]), none for a session that has
/// logged nothing. Returns the fields deleted.
pub(super) static REMOVE_EVENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{USED_FIELDS}{}",
        r"
local slots = tonumber(ARGV[1])
local removed = 0
for i = 2, #ARGV do
  local fields = used(KEYS[1], ARGV[i], slots)
  if fields then removed = removed + redis.call('HDEL', KEYS[1], unpack(fields)) end
end
return removed
"
    ))
});
