--[[
  suppression_remove: lift one suppression (an admin key's act), and record it in
  the tenant's event stream with the reason it had.

  KEYS[1] suppressions_key  keys.suppressions(tenant)       hash entry -> "reason|setAt|setByRole|setBy|note"
  KEYS[2] index_key         keys.suppression_index(tenant)  zset entry -> 0
  KEYS[3] events_key        keys.events(tenant)             stream: suppression.removed

  ARGV[1] entry           a canonical contact or "@domain"
  ARGV[2] key_id          the admin key (the event's actor)
  ARGV[3] events_max      the event stream's cap, entries (0: no events)

  Replies:
    {OK, removed}         the value the entry had; '' when there was none (nothing written)
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local suppressions_key = KEYS[1]
local index_key = KEYS[2]
local events_key = KEYS[3]
local entry = ARGV[1]
local key_id = ARGV[2]
local events_max = tonumber(ARGV[3])

ACTOR, ACTOR_ROLE = key_id, 'admin'

local wrong = wrong_type({[suppressions_key] = 'hash', [index_key] = 'zset', [events_key] = 'stream'})
if wrong then return wrong end

local stored = redis.call('HGET', suppressions_key, entry)
if not stored then return {OK, ''} end
redis.call('HDEL', suppressions_key, entry)
redis.call('ZREM', index_key, entry)
emit(events_key, events_max, 'suppression.removed', 'entry', entry, 'reason', string.match(stored, '^([^|]*)'))
return {OK, stored}
