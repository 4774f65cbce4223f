--[[
  lease_release: end a lease before its expiry.

  The store resolved the lease id to its contact (keys.lease_id) before the call.

  KEYS[1] lease_key       keys.lease(tenant, contact)       hash
  KEYS[2] lease_id_key    keys.lease_id(tenant, lease_id)   string -> contact

  ARGV[1] lease_id
  ARGV[2] agent_id        '' lets anyone of the tenant release; else only the holder may

  Replies:
    {OK, releasedAt ms}
    {LEASE_NOT_FOUND}     expired, released, or taken over
    {NOT_LEASE_HOLDER, holderId}
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local lease_key = KEYS[1]
local lease_id_key = KEYS[2]
local lease_id = ARGV[1]
local agent_id = ARGV[2]

local wrong = wrong_type({[lease_key] = 'hash', [lease_id_key] = 'string'})
if wrong then return wrong end

local held = redis.call('HMGET', lease_key, 'id', 'agentId')
if held[1] ~= lease_id then return {LEASE_NOT_FOUND} end
if agent_id ~= '' and held[2] ~= agent_id then return {NOT_LEASE_HOLDER, held[2]} end
redis.call('DEL', lease_key, lease_id_key)
return {OK, clock()}
