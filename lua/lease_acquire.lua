--[[
  lease_acquire: grant the lease on one contact, extend the caller's own, or refuse.

  A contact is free when no lease key exists, or when its holder has stopped
  heartbeating: an inactive holder's lease protects nothing and is taken over.
  The lease key is created only where none is held (the NX of the design) and
  carries its expiry (PEXPIREAT), so an expired lease simply vanishes.

  Every grant takes a fencing token larger than any before in the tenant and never
  below Redis's time in microseconds, so tokens keep growing even after Redis
  restarts empty. An extension keeps the lease id and the token.

  KEYS[1] agent_key         keys.agent(tenant, agent_id)          hash (read: agentName)
  KEYS[2] heartbeats_key    keys.heartbeats(tenant)               zset
  KEYS[3] lease_key         keys.lease(tenant, contact)           hash
  KEYS[4] lease_id_key      keys.lease_id(tenant, lease_id)       string -> contact
  KEYS[5] agent_leases_key  keys.agent_leases(tenant, agent_id)   zset contact -> expiresAt
  KEYS[6] fence_key         keys.fence(tenant)                    string, last token

  ARGV[1] agent_id
  ARGV[2] lease_id          a fresh lease_<uuid>, or (extend_only) the caller's current one
  ARGV[3] contact           normalized address
  ARGV[4] intent            '' for none (an extension keeps the current intent)
  ARGV[5] duration_ms       milliseconds
  ARGV[6] window_ms         heartbeat liveness window, milliseconds
  ARGV[7] extend_only       '1': only extend the caller's lease ARGV[2], never grant

  Replies:
    {CREATED, lease...}                          granted (lease: see lib.lua lease_reply)
    {OK, lease...}                               the caller's lease ARGV[2], extended
    {HELD_BY_CALLER, lease id}                   the caller holds the contact under that id;
                                                 nothing written, call again with extend_only
    {LEASE_CONFLICT, holderId, holderName, intent, expiresAt}
    {AGENT_NOT_FOUND} | {AGENT_INACTIVE}
    {RETRY}                                      extend_only, and ARGV[2] is no longer held
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local heartbeats_key = KEYS[2]
local lease_key = KEYS[3]
local lease_id_key = KEYS[4]
local agent_leases_key = KEYS[5]
local fence_key = KEYS[6]
local agent_id = ARGV[1]
local lease_id = ARGV[2]
local contact = ARGV[3]
local intent = ARGV[4]
local duration_ms = tonumber(ARGV[5])
local window_ms = tonumber(ARGV[6])
local extend_only = ARGV[7] == '1'

local wrong = wrong_type({[lease_key] = 'hash', [lease_id_key] = 'string', [agent_leases_key] = 'zset', [fence_key] = 'string'})
if wrong then return wrong end

local now_ms, now_us = clock()
local agent_name = redis.call('HGET', agent_key, 'agentName')
if not agent_name then return {AGENT_NOT_FOUND} end
if not is_active(heartbeats_key, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end

local held = redis.call('HMGET', lease_key, unpack(LEASE_FIELDS))
if held[2] == agent_id then
  if held[1] ~= lease_id then return {HELD_BY_CALLER, held[1]} end
  -- A retried or repeated acquire by the holder: same lease, same token, later expiry.
  if intent ~= '' then redis.call('HSET', lease_key, 'intent', intent) end
  lease_expire_at(lease_key, lease_id_key, agent_leases_key, contact, now_ms + duration_ms, now_ms)
  return lease_reply(OK, lease_key)
end
if extend_only then return {RETRY} end
if held[2] and is_active(heartbeats_key, held[2], now_ms, window_ms) then
  return holder_reply(LEASE_CONFLICT, held)
end

local token = math.max(tonumber(redis.call('GET', fence_key) or '0') + 1, now_us)
redis.call('SET', fence_key, int(token))
-- Every field is rewritten: a taken-over lease keeps nothing of its former holder.
redis.call('HSET', lease_key, 'id', lease_id, 'agentId', agent_id, 'agentName', agent_name,
  'intent', intent, 'acquiredAt', int(now_ms), 'fencingToken', int(token))
lease_expire_at(lease_key, lease_id_key, agent_leases_key, contact, now_ms + duration_ms, now_ms)
return lease_reply(CREATED, lease_key)
