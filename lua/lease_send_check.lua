--[[
  lease_send_check: may this agent email this contact now? Reads only.

  Allowed when the agent is active and the contact is free or leased by the agent
  itself; with a fencing token, only if that token is the lease's current one.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)       zset
  KEYS[2] lease_key       keys.lease(tenant, contact)   hash

  ARGV[1] agent_id
  ARGV[2] fencing_token   '' for none
  ARGV[3] window_ms       heartbeat liveness window, milliseconds

  Replies:
    {OK}                                                    allowed
    {AGENT_NOT_FOUND} | {AGENT_INACTIVE}
    {LEASE_CONFLICT, holderId, holderName, intent, expiresAt}
    {STALE_FENCING_TOKEN}                                   the token is not the current one
    {STALE_FENCING_TOKEN, holderId, holderName, intent, expiresAt}
                                                            ... and another active agent holds it
]]
local heartbeats_key = KEYS[1]
local lease_key = KEYS[2]
local agent_id = ARGV[1]
local fencing_token = ARGV[2]
local window_ms = tonumber(ARGV[3])

local now_ms = clock()
if not redis.call('ZSCORE', heartbeats_key, agent_id) then return {AGENT_NOT_FOUND} end
if not is_active(heartbeats_key, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end

local held = redis.call('HMGET', lease_key, unpack(LEASE_FIELDS))
local other_holds = held[2] and held[2] ~= agent_id and is_active(heartbeats_key, held[2], now_ms, window_ms)
if fencing_token ~= '' and (held[2] ~= agent_id or held[7] ~= fencing_token) then
  if other_holds then return holder_reply(STALE_FENCING_TOKEN, held) end
  return {STALE_FENCING_TOKEN}
end
if other_holds then return holder_reply(LEASE_CONFLICT, held) end
return {OK}
