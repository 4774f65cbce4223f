--[[
  lease_send_check: may this agent email this contact now? Reads only.

  Allowed when the agent is active, the contact and its domain are not suppressed,
  and the contact is free or leased by the agent itself; with a fencing token,
  only if that token is the lease's current one.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)       zset
  KEYS[2] lease_key       keys.lease(tenant, contact)   string
  KEYS[3] agent_key       keys.agent(tenant, agent_id)  hash (read: credential)
  KEYS[4] suppressions_key  keys.suppressions(tenant)   hash (read: the contact's and its domain's entries)

  ARGV[1] agent_id
  ARGV[2] fencing_token   '' for none
  ARGV[3] window_ms       heartbeat liveness window, milliseconds
  ARGV[4] credential      SHA-256 hex of the agent's credential, '' for a gate or admin key
  ARGV[5] contact         the canonical contact

  Replies:
    {OK}                                                    allowed
    {BAD_CREDENTIAL}        not the agent's current credential (or no such agent)
    {AGENT_NOT_FOUND} | {AGENT_INACTIVE}
    {SUPPRESSED, entry, suppression}                        the contact or its domain is suppressed
    {LEASE_CONFLICT, holderId, holderName, intent, expiresAt}
    {STALE_FENCING_TOKEN}                                   the token is not the current one
    {STALE_FENCING_TOKEN, holderId, holderName, intent, expiresAt}
                                                            ... and another active agent holds it
]]
local heartbeats_key = KEYS[1]
local lease_key = KEYS[2]
local agent_key = KEYS[3]
local suppressions_key = KEYS[4]
local agent_id = ARGV[1]
local fencing_token = ARGV[2]
local window_ms = tonumber(ARGV[3])
local credential = ARGV[4]
local contact = ARGV[5]

if not credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
local now_ms = clock()
local live = liveness(heartbeats_key, agent_id, now_ms, window_ms)
if live == nil then return {AGENT_NOT_FOUND} end
if not live then return {AGENT_INACTIVE} end
local entry, suppression = suppression_of(suppressions_key, contact)
if entry then return {SUPPRESSED, entry, suppression} end

local held = lease_parse(redis.call('GET', lease_key))
local mine = held and held.holder == agent_id
local other_holds = held and not mine and is_active(heartbeats_key, held.holder, now_ms, window_ms)
local code = nil
if fencing_token ~= '' and not (mine and held.token == fencing_token) then
  code = STALE_FENCING_TOKEN
elseif other_holds then
  code = LEASE_CONFLICT
else
  return {OK}
end
if other_holds then
  return {code, held.holder, held.name, held.intent, redis.call('PEXPIRETIME', lease_key)}
end
return {code}
