--[[
  lease_release: end a lease before its expiry.

  The store found the lease's contact in the holder's registry (the lease id names
  both); the script checks the lease under that contact still has this token.

  KEYS[1] lease_key       keys.lease(tenant, contact)             string
  KEYS[2] registry_key    keys.lease_registry(tenant, tag from the lease id)     hash token -> "expiresAt:contact"
  KEYS[3] events_key      keys.events(tenant)                     stream: lease.released
  KEYS[4] agent_key       keys.agent(tenant, agent_id)            hash (read: credential); any key
                          of the tenant's slot when an admin key releases without agent_id

  ARGV[1] token           the lease's fencing token, from its id
  ARGV[2] agent_id        '' lets anyone of the tenant release; else only the holder may
  ARGV[3] contact
  ARGV[4] events_max      the event stream's cap, entries (0: no events)
  ARGV[5] credential      SHA-256 hex of the agent's credential, '' for an admin key
  ARGV[6] key_id          the admin key's id ('' with a credential): the event's actor

  Replies:
    {OK, releasedAt ms}
    {BAD_CREDENTIAL}      not the agent's current credential (or no such agent)
    {LEASE_NOT_FOUND}     expired, released, or taken over
    {NOT_LEASE_HOLDER, holderId}
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local lease_key = KEYS[1]
local registry_key = KEYS[2]
local events_key = KEYS[3]
local agent_key = KEYS[4]
local token = ARGV[1]
local agent_id = ARGV[2]
local contact = ARGV[3]
local events_max = tonumber(ARGV[4])
local credential = ARGV[5]
local key_id = ARGV[6]

local wrong = wrong_type({[lease_key] = 'string', [registry_key] = 'hash', [events_key] = 'stream'})
if wrong then return wrong end

if not credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
act(agent_id, credential, key_id, 'admin')
local held = lease_parse(redis.call('GET', lease_key))
if not held or held.token ~= token then return {LEASE_NOT_FOUND} end
if agent_id ~= '' and held.holder ~= agent_id then return {NOT_LEASE_HOLDER, held.holder} end
redis.call('DEL', lease_key)
redis.call('HDEL', registry_key, token)
emit(events_key, events_max, 'lease.released', 'agentId', held.holder, 'contactEmail', contact,
  'fencingToken', token, 'reason', credential == '' and 'forced' or 'released')
return {OK, clock()}
