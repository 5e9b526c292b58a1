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
/// owner writing late never overwrites its successor), and so is a session's standalone top
/// (`<id>:t`); what is kept is written with one `HSET`. Returns how many fields were written.
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
  if ARGV[b + 2] == '0' then
    local t = tops[id]
    if t == nil then
      tids[#tids + 1] = id
      query[#query + 1] = id .. ':t'
    end
    if t == nil or ord > t[1] then tops[id] = {ord, ARGV[b + 1], ARGV[b + 3]} end
  end
end
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
  local t = tops[id]
  if t[1] > ord_of(current[n + k]) then kept[id .. ':t'] = t[2] .. ':' .. t[3] end
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
