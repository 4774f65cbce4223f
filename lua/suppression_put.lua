--[[
  suppression_put: suppress contacts or whole domains, so that no agent leases or
  emails them, and record it in the tenant's event stream.

  An entry is a canonical contact or "@domain". A new entry is written as given;
  an existing one is kept as it is unless the caller may replace it (an admin key):
  an agent or a gate key adds suppressions and cannot weaken or rewrite one. A
  second index, a zset of every entry at score 0, lists them in order (BYLEX) for
  paging and export.

  KEYS[1] suppressions_key  keys.suppressions(tenant)       hash entry -> "reason|setAt|setByRole|setBy|note"
  KEYS[2] index_key         keys.suppression_index(tenant)  zset entry -> 0
  KEYS[3] events_key        keys.events(tenant)             stream: suppression.added | suppression.imported

  ARGV[1] principal_id    the agent id or the API key's id that sets them (the events' actor)
  ARGV[2] principal_role  'agent', 'gate', 'admin'
  ARGV[3] replace         '1': an existing entry is replaced (an admin key); '' keeps it
  ARGV[4] events_max      the event stream's cap, entries (0: no events)
  ARGV[5] batch           '1': one suppression.imported event for the call (a bulk import),
                          '': one suppression.added per entry written
  ARGV[6..] entries       (entry, reason, note) triples; note '' for none

  Replies:
    {OK, written, state, stored, state, stored, ...}  written: how many entries were
                          new or replaced; then per entry what happened ('new', 'replaced'
                          or 'kept') and its value as it now stands
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local suppressions_key = KEYS[1]
local index_key = KEYS[2]
local events_key = KEYS[3]
local principal_id = ARGV[1]
local principal_role = ARGV[2]
local replace = ARGV[3] == '1'
local events_max = tonumber(ARGV[4])
local batch = ARGV[5] == '1'
local entries = {unpack(ARGV, 6)}

ACTOR, ACTOR_ROLE = principal_id, principal_role

local wrong = wrong_type({[suppressions_key] = 'hash', [index_key] = 'zset', [events_key] = 'stream'})
if wrong then return wrong end

local now_ms = clock()
local reply, written = {OK, 0}, 0
for i = 1, #entries, 3 do
  local entry, reason, note = entries[i], entries[i + 1], entries[i + 2]
  local stored = redis.call('HGET', suppressions_key, entry)
  local kept_reason, kept_note
  if stored then kept_reason, kept_note = string.match(stored, '^([^|]*)|[^|]*|[^|]*|[^|]*|(.*)$') end
  -- Written when new, or replaced by an admin with another reason or note (the same
  -- again changes nothing, not even who set it or when).
  local state = 'kept'
  if not stored or (replace and (kept_reason ~= reason or kept_note ~= note)) then
    state = stored and 'replaced' or 'new'
    stored = table.concat({reason, int(now_ms), principal_role, principal_id, note}, '|')
    redis.call('HSET', suppressions_key, entry, stored)
    redis.call('ZADD', index_key, 0, entry)
    written = written + 1
    if not batch then
      emit(events_key, events_max, 'suppression.added', 'entry', entry, 'reason', reason, 'note', note)
    end
  end
  reply[#reply + 1] = state
  reply[#reply + 1] = stored
end
if batch and written > 0 then emit(events_key, events_max, 'suppression.imported', 'count', int(written)) end
reply[2] = written
return reply
