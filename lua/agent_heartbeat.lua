--[[
  agent_heartbeat: record that an agent is alive, at Redis's time.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)   zset agentId -> last heartbeat ms
  KEYS[2] agent_key       keys.agent(tenant, agent_id)   hash (read: credential)

  ARGV[1] agent_id
  ARGV[2] credential      SHA-256 hex of the agent's credential (lib.lua agent_credential_ok: never '')

  Replies:
    {OK, lastHeartbeat ms}
    {BAD_CREDENTIAL}       not the agent's current credential (or no such agent)
    {AGENT_NOT_FOUND}      the agent is not registered (the zset holds exactly the registered agents)
]]
local heartbeats_key = KEYS[1]
local agent_key = KEYS[2]
local agent_id = ARGV[1]
local credential = ARGV[2]

if not agent_credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
-- ZSCORE fails on a key of another type before anything is written.
if not redis.call('ZSCORE', heartbeats_key, agent_id) then return {AGENT_NOT_FOUND} end
local now_ms = clock()
redis.call('ZADD', heartbeats_key, int(now_ms), agent_id)
return {OK, now_ms}
