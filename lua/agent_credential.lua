--[[
  agent_credential: give an agent a new credential; the current one is refused
  from this moment on, by every script on every instance.

  KEYS[1] agent_key       keys.agent(tenant, agent_id)   hash (writes: credential)
  KEYS[2] events_key      keys.events(tenant)            stream: agent.credential_rotated

  ARGV[1] agent_id
  ARGV[2] credential      SHA-256 hex of the new credential, for an agent
  ARGV[3] allowed_roles   the roles the calling key may manage, one per line; '' for any
  ARGV[4] events_max      the event stream's cap, entries (0: no events)
  ARGV[5] key_id          the calling key (the event's actor)
  ARGV[6] key_role        its role
  ARGV[7] human_credential  SHA-256 hex of the new credential, for a human (the same secret
                          with the human prefix): the member's kind picks one

  Replies:
    {OK, rotatedAt ms, kind}
    {AGENT_NOT_FOUND}
    {ROLE_NOT_ALLOWED, role}  an enroll key for other roles, or role 'human': a human
                          member, whose credential only an admin key rotates; nothing written
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local events_key = KEYS[2]
local agent_id = ARGV[1]
local credential = ARGV[2]
local allowed_roles = ARGV[3]
local events_max = tonumber(ARGV[4])
local key_id = ARGV[5]
local key_role = ARGV[6]
local human_credential = ARGV[7]

ACTOR, ACTOR_ROLE = key_id, key_role

local wrong = wrong_type({[agent_key] = 'hash', [events_key] = 'stream'})
if wrong then return wrong end
local member = redis.call('HMGET', agent_key, 'agentRole', 'kind')
local role, kind = member[1], member[2] or 'agent'
if not role then return {AGENT_NOT_FOUND} end
if kind == 'human' and key_role ~= 'admin' then return {ROLE_NOT_ALLOWED, 'human'} end
if not role_allowed(allowed_roles, role) then return {ROLE_NOT_ALLOWED, role} end
local now_ms = clock()
redis.call('HSET', agent_key, 'credential', kind == 'human' and human_credential or credential)
emit(events_key, events_max, 'agent.credential_rotated', 'agentId', agent_id,
  'agentName', redis.call('HGET', agent_key, 'agentName'), 'agentRole', role)
return {OK, now_ms, kind}
