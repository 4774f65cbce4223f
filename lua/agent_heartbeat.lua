--[[
  agent_heartbeat: record that an agent is alive, at Redis's time.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)   zset agentId -> last heartbeat ms
  KEYS[2] agent_key       keys.agent(tenant, agent_id)   hash (read: credential)
  KEYS[3] since_key       keys.active_since(tenant)  zset agentId -> run start µs (lib.lua note_heartbeat)

  ARGV[1] agent_id
  ARGV[2] credential      SHA-256 hex of the agent's credential (lib.lua agent_credential_ok: never '')
  ARGV[3] window_ms       heartbeat liveness window, milliseconds

  Replies:
    {OK, lastHeartbeat ms}
    {BAD_CREDENTIAL}       not the agent's current credential (or no such agent)
    {AGENT_NOT_FOUND}      the agent is not registered (the zset holds exactly the registered agents)
]]
local heartbeats_key = KEYS[1]
local agent_key = KEYS[2]
local since_key = KEYS[3]
local agent_id = ARGV[1]
local credential = ARGV[2]
local window_ms = tonumber(ARGV[3])

if not agent_credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
-- No TYPE checks on the hot path: ZSCORE fails on a heartbeats key of another type,
-- and the first write of a returning agent, to since_key, on one of its own, each
-- before anything is written.
local previous_ms = redis.call('ZSCORE', heartbeats_key, agent_id)
if not previous_ms then return {AGENT_NOT_FOUND} end
local now_ms, now_us = clock()
note_heartbeat(since_key, agent_id, previous_ms, now_ms, now_us, window_ms)
redis.call('ZADD', heartbeats_key, int(now_ms), agent_id)
return {OK, now_ms}
