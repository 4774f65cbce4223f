--[[
  lease_renew: move the expiry of a lease its holder still holds; id and token stay.

  The store resolved the lease id to its contact (keys.lease_id) before the call;
  the script checks the lease under that contact still carries this id.

  KEYS[1] heartbeats_key    keys.heartbeats(tenant)               zset
  KEYS[2] lease_key         keys.lease(tenant, contact)           hash
  KEYS[3] lease_id_key      keys.lease_id(tenant, lease_id)       string -> contact
  KEYS[4] agent_leases_key  keys.agent_leases(tenant, agent_id)   zset contact -> expiresAt

  ARGV[1] lease_id
  ARGV[2] agent_id          who asks; must be the holder
  ARGV[3] contact
  ARGV[4] duration_ms       the new expiry is now + duration_ms
  ARGV[5] window_ms         heartbeat liveness window, milliseconds

  Replies:
    {OK, lease...}
    {LEASE_NOT_FOUND}       expired, released, or taken over
    {NOT_LEASE_HOLDER, holderId}
    {AGENT_INACTIVE}        the holder stopped heartbeating; heartbeat first
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local heartbeats_key = KEYS[1]
local lease_key = KEYS[2]
local lease_id_key = KEYS[3]
local agent_leases_key = KEYS[4]
local lease_id = ARGV[1]
local agent_id = ARGV[2]
local contact = ARGV[3]
local duration_ms = tonumber(ARGV[4])
local window_ms = tonumber(ARGV[5])

local wrong = wrong_type({[lease_key] = 'hash', [lease_id_key] = 'string', [agent_leases_key] = 'zset'})
if wrong then return wrong end

local now_ms = clock()
local held = redis.call('HMGET', lease_key, 'id', 'agentId')
if held[1] ~= lease_id then return {LEASE_NOT_FOUND} end
if held[2] ~= agent_id then return {NOT_LEASE_HOLDER, held[2]} end
if not is_active(heartbeats_key, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end
lease_expire_at(lease_key, lease_id_key, agent_leases_key, contact, now_ms + duration_ms, now_ms)
return lease_reply(OK, lease_key)
