--[[
  agent_remove: deregister an agent and release every lease it holds.

  The store reads the agent's lease index first and passes each indexed contact's
  lease key; if a lease was indexed since, the script writes nothing and replies
  RETRY so the store reads again.

  KEYS[1]   agent_key         keys.agent(tenant, agent_id)         hash
  KEYS[2]   agents_key        keys.agents(tenant)                  zset
  KEYS[3]   heartbeats_key    keys.heartbeats(tenant)              zset
  KEYS[4]   agent_leases_key  keys.agent_leases(tenant, agent_id)  zset contact -> expiresAt
  KEYS[5..] lease_keys        keys.lease(tenant, contact), one per contact in ARGV[2..]

  ARGV[1]   agent_id
  ARGV[2..] contacts          the contacts read from the lease index, in KEYS[5..] order

  Replies:
    {OK, number of leases released}
    {AGENT_NOT_FOUND}
    {RETRY}                   the lease index holds a contact not passed in
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local agents_key = KEYS[2]
local heartbeats_key = KEYS[3]
local agent_leases_key = KEYS[4]
local lease_keys = {unpack(KEYS, 5)}
local agent_id = ARGV[1]
local contacts = {unpack(ARGV, 2)}

local expected = {[agent_key] = 'hash', [agents_key] = 'zset', [heartbeats_key] = 'zset', [agent_leases_key] = 'zset'}
for _, lease_key in ipairs(lease_keys) do expected[lease_key] = 'hash' end
local wrong = wrong_type(expected)
if wrong then return wrong end

if redis.call('EXISTS', agent_key) == 0 then return {AGENT_NOT_FOUND} end
local passed = {}
for _, contact in ipairs(contacts) do passed[contact] = true end
for _, contact in ipairs(redis.call('ZRANGE', agent_leases_key, 0, -1)) do
  if not passed[contact] then return {RETRY} end
end

local released = 0
for _, lease_key in ipairs(lease_keys) do
  if redis.call('HGET', lease_key, 'agentId') == agent_id then
    redis.call('DEL', lease_key)
    released = released + 1
  end
end
redis.call('DEL', agent_key, agent_leases_key)
redis.call('ZREM', agents_key, agent_id)
redis.call('ZREM', heartbeats_key, agent_id)
return {OK, released}
