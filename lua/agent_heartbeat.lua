--[[
  agent_heartbeat: record that an agent is alive, at Redis's time.

  KEYS[1] heartbeats_key  keys.heartbeats(tenant)   zset agentId -> last heartbeat ms

  ARGV[1] agent_id

  Replies:
    {OK, lastHeartbeat ms}
    {AGENT_NOT_FOUND}      the agent is not registered (the zset holds exactly the registered agents)
]]
local heartbeats_key = KEYS[1]
local agent_id = ARGV[1]

-- ZSCORE fails on a key of another type before anything is written.
if not redis.call('ZSCORE', heartbeats_key, agent_id) then return {AGENT_NOT_FOUND} end
local now_ms = clock()
redis.call('ZADD', heartbeats_key, int(now_ms), agent_id)
return {OK, now_ms}
