package redis

import "github.com/redis/rueidis"

// The engine's Lua scripts. Each touches the keys of one Cluster slot: the
// registry's, or one partition's (a channel's meta hash, its Stream and
// its PUB/SUB channel share their partition's hash tag). Times are Redis's
// own (TIME), so that servers with skewed clocks agree on ages.
//
// A channel's meta hash holds e (epoch), t (top offset) and a (last
// activity, ms). Its Stream holds one entry per kept message, with the ID
// "<offset>-0" and the fields d (payload), t (time, ms) and k (the
// publisher's token). PUB/SUB messages are "p <offset> <epoch> <token>\n
// <payload>" for a publication and "e <epoch>" for an end.

const nowMS = `
local now = redis.call('TIME')
local ms = string.format('%.0f', now[1] * 1000 + math.floor(now[2] / 1000))
`

// register takes a name in the registry. KEYS: registry. ARGV: id, max
// (negative: no limit). Returns "ok", "taken" or "full": count and add in
// one step, so that the fleet-wide limit holds under concurrent creates.
var registerScript = rueidis.NewLuaScript(nowMS + `
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 'taken' end
local max = tonumber(ARGV[2])
if max >= 0 and redis.call('ZCARD', KEYS[1]) >= max then return 'full' end
redis.call('ZADD', KEYS[1], ms, ARGV[1])
return 'ok'
`)

// makeChannel writes a new channel's meta, replacing anything left under
// its keys. KEYS: meta, stream. ARGV: epoch, only-if-missing ("1": keep a
// live channel as it is). Returns the channel's epoch.
var makeChannelScript = rueidis.NewLuaScript(nowMS + `
if ARGV[2] == '1' then
  local e = redis.call('HGET', KEYS[1], 'e')
  if e then return e end
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'e', ARGV[1], 't', 0, 'a', ms)
return ARGV[1]
`)

// publish gives a message the channel's next offset, keeps it within the
// history's bounds, and publishes it tagged with its position, in one
// step: a publication and its position never disagree. KEYS: meta, stream.
// ARGV: payload, history size, history TTL (ms), token, PUB/SUB channel.
// Returns {offset, epoch}, or nil if the channel is not live.
var publishScript = rueidis.NewLuaScript(nowMS + `
local e = redis.call('HGET', KEYS[1], 'e')
if not e then return false end
local top = redis.call('HINCRBY', KEYS[1], 't', 1)
redis.call('HSET', KEYS[1], 'a', ms)
local size = tonumber(ARGV[2])
if size > 0 and tonumber(ARGV[3]) > 0 then
  redis.call('XADD', KEYS[2], 'MAXLEN', size, string.format('%.0f-0', top), 'd', ARGV[1], 't', ms, 'k', ARGV[4])
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
else
  redis.call('DEL', KEYS[2])
end
redis.call('SPUBLISH', ARGV[5], string.format('p %.0f ', top) .. e .. ' ' .. ARGV[4] .. '\n' .. ARGV[1])
return {top, e}
`)

// history reads a channel's position and the kept messages from an
// offset on, with its partition's boot mark (set to a new one if Redis
// has none: it lost its data), in the same step: "found under this mark"
// or "missing under this mark". KEYS: meta, stream, the partition's mark.
// ARGV: first offset ("" for none), a new mark. Returns {mark, epoch,
// top, now (ms), entries}, or {mark} if the channel is not live.
var historyScript = rueidis.NewLuaScript(nowMS + `
local b = redis.call('GET', KEYS[3])
if not b then
  b = ARGV[2]
  redis.call('SET', KEYS[3], b)
end
local m = redis.call('HMGET', KEYS[1], 'e', 't')
if not m[1] then return {b} end
local entries = {}
if ARGV[1] ~= '' then entries = redis.call('XRANGE', KEYS[2], ARGV[1] .. '-0', '+') end
return {b, m[1], m[2], ms, entries}
`)

// closeChannel ends a channel: its keys go, and its subscribers hear the
// end. KEYS: meta, stream. ARGV: PUB/SUB channel, idle (ms; "" to end it
// whatever its activity). With idle set it ends the channel only if it
// has been idle that long, and returns its last activity otherwise.
// Returns "ended" or "gone" (no such channel).
var closeScript = rueidis.NewLuaScript(nowMS + `
local m = redis.call('HMGET', KEYS[1], 'e', 'a')
if not m[1] then return 'gone' end
if ARGV[2] ~= '' and tonumber(ms) - tonumber(m[2]) < tonumber(ARGV[2]) then return m[2] end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SPUBLISH', ARGV[1], 'e ' .. m[1])
return 'ended'
`)

// touch marks channels active: their listeners keep them from idle
// expiry. KEYS: metas.
var touchScript = rueidis.NewLuaScript(nowMS + `
for _, k in ipairs(KEYS) do
  if redis.call('EXISTS', k) == 1 then redis.call('HSET', k, 'a', ms) end
end
return 0
`)

// newEpoch gives a channel a new epoch and drops its history, if its
// epoch is still the one given. KEYS: meta, stream. ARGV: old epoch, new
// epoch. Returns the channel's epoch, or nil if it is not live.
var newEpochScript = rueidis.NewLuaScript(`
local e = redis.call('HGET', KEYS[1], 'e')
if e ~= ARGV[1] then return e end
redis.call('HSET', KEYS[1], 'e', ARGV[2])
redis.call('DEL', KEYS[2])
return ARGV[2]
`)
