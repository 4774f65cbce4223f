--[[
  lease_renew: move the expiry of a lease its holder still holds; the token stays.

  The store found the lease's contact in the holder's registry (the lease id names
  both); the script checks the lease under that contact still has this token.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)                 zset
  KEYS[2] lease_key       keys.lease(tenant, contact)             string
  KEYS[3] registry_key    keys.lease_registry(tenant, tag from the lease id)     hash token -> "expiresAt:contact"
  KEYS[4] events_key      keys.events(tenant)                     stream: lease.renewed
  KEYS[5] agent_key       keys.agent(tenant, agent_id)            hash (read: credential)

  ARGV[1] token           the lease's fencing token, from its id
  ARGV[2] agent_id        who asks; must be the holder
  ARGV[3] contact
  ARGV[4] duration_ms     the new expiry is now + duration_ms
  ARGV[5] window_ms       heartbeat liveness window, milliseconds
  ARGV[6] events_max      the event stream's cap, entries (0: no events)
  ARGV[7] credential      SHA-256 hex of the agent's credential (lib.lua agent_credential_ok: never '')

  Replies:
    {OK, lease...}
    {BAD_CREDENTIAL}      not the agent's current credential (or no such agent)
    {LEASE_NOT_FOUND}     expired, released, or taken over
    {NOT_LEASE_HOLDER, holderId}
    {AGENT_INACTIVE}      the holder stopped heartbeating; heartbeat first
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local heartbeats_key = KEYS[1]
local lease_key = KEYS[2]
local registry_key = KEYS[3]
local events_key = KEYS[4]
local agent_key = KEYS[5]
local token = ARGV[1]
local agent_id = ARGV[2]
local contact = ARGV[3]
local duration_ms = tonumber(ARGV[4])
local window_ms = tonumber(ARGV[5])
local events_max = tonumber(ARGV[6])
local credential = ARGV[7]

local wrong = wrong_type({[lease_key] = 'string', [registry_key] = 'hash', [events_key] = 'stream'})
if wrong then return wrong end

if not agent_credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
act(agent_id, credential)
local now_ms = clock()
local held = lease_parse(redis.call('GET', lease_key))
if not held or held.token ~= token then return {LEASE_NOT_FOUND} end
if held.holder ~= agent_id then return {NOT_LEASE_HOLDER, held.holder} end
if not is_active(heartbeats_key, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end
local expires_ms = now_ms + duration_ms
redis.call('PEXPIREAT', lease_key, int(expires_ms))
registry_put(registry_key, token, contact, expires_ms, now_ms)
emit(events_key, events_max, 'lease.renewed', 'agentId', agent_id, 'contactEmail', contact,
  'fencingToken', token, 'expiresAt', int(expires_ms))
return lease_reply(OK, held, expires_ms)
