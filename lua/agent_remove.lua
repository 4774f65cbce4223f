--[[
  agent_remove: deregister an agent and release every lease it holds.

  The store reads the agent's lease registry first and passes the lease key of
  each contact in it; if the registry names a contact not passed in (a lease
  granted since), the script writes nothing and replies RETRY so the store
  reads again.

  KEYS[1]   agent_key       keys.agent(tenant, agent_id)            hash
  KEYS[2]   agents_key      keys.agents(tenant)                     zset
  KEYS[3]   heartbeats_key  keys.heartbeats(tenant)                 zset
  KEYS[4]   registry_key    keys.lease_registry(tenant, agent_tag(agent_id))   hash token -> "expiresAt:contact"
  KEYS[5]   events_key      keys.events(tenant)                     stream: lease.released, agent.removed
  KEYS[6]   since_key       keys.active_since(tenant)               zset
  KEYS[7]   humans_key      keys.humans(tenant)                     zset humanId -> registeredAt µs
  KEYS[8]   roles_key       keys.agent_roles(tenant)                hash agentId -> agentRole
  KEYS[9..] lease_keys      keys.lease(tenant, contact), one per contact in ARGV[4..]

  ARGV[1]   agent_id
  ARGV[2]   events_max      the event stream's cap, entries (0: no events)
  ARGV[3]   key_id          the admin key that deregisters: the events' actor
  ARGV[4..] contacts        the contacts read from the registry, in KEYS[9..] order

  Replies:
    {OK, number of leases released}
    {AGENT_NOT_FOUND}
    {RETRY}                 the registry holds a contact not passed in
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local agents_key = KEYS[2]
local heartbeats_key = KEYS[3]
local registry_key = KEYS[4]
local events_key = KEYS[5]
local since_key = KEYS[6]
local humans_key = KEYS[7]
local roles_key = KEYS[8]
local lease_keys = {unpack(KEYS, 9)}
local agent_id = ARGV[1]
local events_max = tonumber(ARGV[2])
local key_id = ARGV[3]
local contacts = {unpack(ARGV, 4)}

ACTOR, ACTOR_ROLE = key_id, 'admin'

local expected = {[agent_key] = 'hash', [agents_key] = 'zset', [heartbeats_key] = 'zset', [registry_key] = 'hash',
  [events_key] = 'stream', [since_key] = 'zset', [humans_key] = 'zset', [roles_key] = 'hash'}
for _, lease_key in ipairs(lease_keys) do expected[lease_key] = 'string' end
local wrong = wrong_type(expected)
if wrong then return wrong end

if redis.call('EXISTS', agent_key) == 0 then return {AGENT_NOT_FOUND} end
local lease_key_of = {}
for i, contact in ipairs(contacts) do lease_key_of[contact] = lease_keys[i] end
local entries = redis.call('HGETALL', registry_key)
for i = 2, #entries, 2 do
  if not lease_key_of[string.match(entries[i], '^%d+:(.*)$')] then return {RETRY} end
end

-- Read every lease first, write after: nothing is half done if one cannot be read.
local deletes, stale, released = {}, {}, {}
for i = 1, #entries, 2 do
  local token, lease_key = entries[i], lease_key_of[string.match(entries[i + 1], '^%d+:(.*)$')]
  local held = lease_parse(redis.call('GET', lease_key))
  local live = held and held.token == token
  if live and held.holder == agent_id then
    deletes[#deletes + 1] = lease_key
    released[#released + 1] = {token, string.match(entries[i + 1], '^%d+:(.*)$')}
  end
  -- An entry naming another agent's live lease is that agent's: their 64-bit tags
  -- collided (keys.py lease_registry). It stays; every other entry goes.
  if not (live and held.holder ~= agent_id) then stale[#stale + 1] = token end
end
for _, lease_key in ipairs(deletes) do redis.call('DEL', lease_key) end
for _, token in ipairs(stale) do redis.call('HDEL', registry_key, token) end
for _, lease in ipairs(released) do
  emit(events_key, events_max, 'lease.released', 'agentId', agent_id, 'contactEmail', lease[2],
    'fencingToken', lease[1], 'reason', 'agent_removed')
end
emit(events_key, events_max, 'agent.removed', 'agentId', agent_id,
  'agentName', redis.call('HGET', agent_key, 'agentName'), 'releasedLeases', #deletes)
redis.call('DEL', agent_key)
redis.call('ZREM', agents_key, agent_id)
redis.call('ZREM', heartbeats_key, agent_id)
redis.call('ZREM', humans_key, agent_id)
redis.call('HDEL', roles_key, agent_id)
redis.call('ZREM', since_key, agent_id)
return {OK, #deletes}
