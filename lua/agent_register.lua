--[[
  agent_register: create or update the agent of one name, and count it as a heartbeat.

  The agent id is derived from (tenant, agentName), so two registrations of one
  name race on this one key and the script decides: the first creates, the rest update.

  A member is an agent or a human (kind), fixed when it is created. A human (an
  admin key's to register) has no heartbeat and is in no active set: it is kept in
  the humans zset with when it was registered, which admits it to the electorates
  fixed since. An agent's role is also kept in the agent-roles hash, which a
  request whose policy has voter roles reads.

  KEYS[1] agent_key       keys.agent(tenant, agent_id)          hash
  KEYS[2] agents_key      keys.agents(tenant)                   zset agentId -> registeredAt
  KEYS[3] heartbeats_key  keys.heartbeats(tenant)               zset agentId -> last heartbeat
  KEYS[4] events_key      keys.events(tenant)                   stream: agent.registered
  KEYS[5] since_key       keys.active_since(tenant)             zset agentId -> run start µs (lib.lua note_heartbeat)
  KEYS[6] quotas_key      keys.quotas(tenant)                   hash (read: agents)
  KEYS[7] humans_key      keys.humans(tenant)                   zset humanId -> registeredAt µs
  KEYS[8] roles_key       keys.agent_roles(tenant)              hash agentId -> agentRole

  ARGV[1] agent_id        agent_<uuid5>
  ARGV[2] agent_name
  ARGV[3] agent_role      '' keeps the current role ('general' for a new agent)
  ARGV[4] metadata        a JSON object; '' keeps the current one ('{}' for a new agent)
  ARGV[5] events_max      the event stream's cap, entries (0: no events)
  ARGV[6] allowed_roles   the roles the registering key may register, one per line; '' for any
  ARGV[7] credential      SHA-256 hex of the agent's new credential: it replaces the current one
  ARGV[8] key_id          the registering key (the event's actor)
  ARGV[9] key_role        its role
  ARGV[10] window_ms      heartbeat liveness window, milliseconds
  ARGV[11] agents_quota   the deployment's default quota of agents (lib.lua quota)
  ARGV[12] kind           'agent' | 'human'

  Replies:
    {CREATED, {agent hash flat}, lastHeartbeat ms}   a new agent
    {OK, {agent hash flat}, lastHeartbeat ms}        an existing agent, updated; its
                              earlier credential is refused from now on
    {QUOTA_EXCEEDED, 'agents', quota}  a new agent, and the tenant has that many; nothing written
    {ROLE_NOT_ALLOWED, role}  the agent would have a role the key may not register
                              (its new role, or the current one it keeps), or role
                              'human': a human, and the key is not an admin's; nothing written
    {KIND_MISMATCH, kind}     the member of this name exists and is of that other kind
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local agents_key = KEYS[2]
local heartbeats_key = KEYS[3]
local events_key = KEYS[4]
local since_key = KEYS[5]
local quotas_key = KEYS[6]
local agent_id = ARGV[1]
local agent_name = ARGV[2]
local agent_role = ARGV[3]
local metadata = ARGV[4]
local events_max = tonumber(ARGV[5])
local allowed_roles = ARGV[6]
local credential = ARGV[7]
local key_id = ARGV[8]
local key_role = ARGV[9]
local window_ms = tonumber(ARGV[10])
local agents_quota = ARGV[11]
local humans_key = KEYS[7]
local roles_key = KEYS[8]
local kind = ARGV[12]

ACTOR, ACTOR_ROLE = key_id, key_role

local wrong = wrong_type({[agent_key] = 'hash', [agents_key] = 'zset', [heartbeats_key] = 'zset', [events_key] = 'stream',
  [since_key] = 'zset', [humans_key] = 'zset', [roles_key] = 'hash'})
if wrong then return wrong end

local current = redis.call('HMGET', agent_key, 'agentRole', 'kind')
if current[1] and (current[2] or 'agent') ~= kind then return {KIND_MISMATCH, current[2] or 'agent'} end
if kind == 'human' and key_role ~= 'admin' then return {ROLE_NOT_ALLOWED, 'human'} end
local role = agent_role
if role == '' then role = current[1] or 'general' end
if not role_allowed(allowed_roles, role) then return {ROLE_NOT_ALLOWED, role} end

local now_ms, now_us = clock()
local code = OK
local new = redis.call('EXISTS', agent_key) == 0
if new then
  local limit = quota(quotas_key, 'agents', agents_quota)
  if redis.call('ZCOUNT', agents_key, '-inf', '+inf') >= limit then return {QUOTA_EXCEEDED, 'agents', limit} end
end
if new then
  code = CREATED
  redis.call('HSET', agent_key, 'id', agent_id, 'agentName', agent_name, 'agentRole', 'general',
    'metadata', '{}', 'registeredAt', int(now_ms))
  if kind == 'human' then redis.call('HSET', agent_key, 'kind', 'human') end  -- none: an agent
  redis.call('ZADD', agents_key, int(now_ms), agent_id)
end
redis.call('HSET', agent_key, 'updatedAt', int(now_ms), 'credential', credential)
if agent_role ~= '' then redis.call('HSET', agent_key, 'agentRole', agent_role) end
if metadata ~= '' then redis.call('HSET', agent_key, 'metadata', metadata) end
if kind == 'human' then
  redis.call('ZADD', humans_key, 'NX', int(now_us), agent_id)
else
  redis.call('HSET', roles_key, agent_id, role)
  note_heartbeat(since_key, agent_id, redis.call('ZSCORE', heartbeats_key, agent_id), now_ms, now_us, window_ms)
  redis.call('ZADD', heartbeats_key, int(now_ms), agent_id)
end
emit(events_key, events_max, 'agent.registered', 'agentId', agent_id, 'agentName', agent_name,
  'agentRole', redis.call('HGET', agent_key, 'agentRole'), 'created', code == CREATED and '1' or '0',
  'kind', kind == 'human' and 'human' or '')
return {code, redis.call('HGETALL', agent_key), now_ms}
