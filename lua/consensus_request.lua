--[[
  consensus_request: open a consensus request for peers to vote on.

  The electorate is fixed here: the agents active now, other than the requester
  (electorateAt; lib.lua, the electorate), that the action's policy admits. The
  policy in force (the policies hash's entry for the action) is copied into the
  request, so a later change does not move it; with voter roles, the members are
  written into the request's electorate set, which costs O(active agents) once.

  The id comes from the store, so running the script twice (redis-py's retry after a
  lost reply) finds the request already made and returns it unchanged. With an
  Idempotency-Key, the first answer is recorded in the same script, so a client
  repeating the request gets that answer again, however often and however
  concurrently it repeats it.

  KEYS[1] cons_key        keys.consensus(tenant, id)               hash
  KEYS[2] votes_key       keys.votes(tenant, id)                   hash agentId -> vote record
  KEYS[3] heartbeats_key  keys.heartbeats(tenant)                  zset
  KEYS[4] all_key         keys.consensus_list(tenant, 'all')       zset id -> createdAt
  KEYS[5] pending_key     keys.consensus_list(tenant, 'pending')   zset id -> createdAt
  KEYS[6] approved_key    keys.consensus_list(tenant, 'approved')  zset id -> createdAt
  KEYS[7] rejected_key    keys.consensus_list(tenant, 'rejected')  zset id -> createdAt
  KEYS[8] expired_key     keys.consensus_list(tenant, 'expired')   zset id -> createdAt
  KEYS[9] due_key         keys.consensus_due(tenant)               zset id -> expiresAt
  KEYS[10] events_key      keys.events(tenant)                      stream: consensus.requested
  KEYS[11] since_key       keys.active_since(tenant)                zset agentId -> run start µs (swept)
  KEYS[12] mark_key        keys.lapse_mark(tenant)                  string
  KEYS[13] electorate_key  keys.electorate(tenant, id)              set: the members, with voter roles
  KEYS[14] requester_key   keys.agent(tenant, requester_id)          hash (read: credential)
  KEYS[15] quotas_key      keys.quotas(tenant)                      hash (read: pendingConsensus)
  KEYS[16] policies_key    keys.consensus_policies(tenant)          hash (read: the action's policy)
  KEYS[17] roles_key       keys.agent_roles(tenant)                 hash (read, with voter roles)
  KEYS[18..] idempotency_key  keys.idempotency(tenant, key digest) hash, only with an Idempotency-Key

  ARGV[1] consensus_id    cons_<uuid>
  ARGV[2] requester_id    the requesting agent
  ARGV[3] action
  ARGV[4] contact         normalized address, '' for none
  ARGV[5] reason          '' for none
  ARGV[6] timeout_ms      the request expires at now + timeout_ms
  ARGV[7] window_ms       heartbeat liveness window, milliseconds
  ARGV[8] retention_ms    how long a decided request is kept
  ARGV[9] max_age_ms      list entries older than this are pruned (longest timeout + retention)
  ARGV[10] fingerprint    digest of the request's meaning, compared on a repeated Idempotency-Key
  ARGV[11] idempotency_ms how long an Idempotency-Key is remembered, milliseconds
  ARGV[12] events_max     the event stream's cap, entries (0: no events)
  ARGV[13] credential     SHA-256 hex of the requester's credential (lib.lua agent_credential_ok: never '')
  ARGV[14] pending_quota  the deployment's default quota of pending requests (lib.lua quota)

  Replies:
    {CREATED, consensus...}    (consensus: see lib.lua consensus_reply)
    {OK, consensus...}         this id already exists: the earlier run's request
    {REPLAYED, {first answer's consensus hash flat, with eligible and needed}}
                               the Idempotency-Key was seen with this fingerprint
    {IDEMPOTENCY_KEY_REUSED}   the Idempotency-Key was seen with another fingerprint
    {BAD_CREDENTIAL}           not the requester's current credential (or no such agent)
    {AGENT_NOT_FOUND} | {AGENT_INACTIVE}
    {QUOTA_EXCEEDED, 'pendingConsensus', quota}  the tenant has that many requests pending and
                               not yet past their deadline; nothing written
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local k = consensus_keys()
local consensus_id = ARGV[1]
local requester_id = ARGV[2]
local action = ARGV[3]
local contact = ARGV[4]
local reason = ARGV[5]
local timeout_ms = tonumber(ARGV[6])
local window_ms = tonumber(ARGV[7])
local retention_ms = tonumber(ARGV[8])
local max_age_ms = tonumber(ARGV[9])
local idempotency_key = KEYS[18]  -- nil without an Idempotency-Key
local fingerprint = ARGV[10]
local idempotency_ms = tonumber(ARGV[11])
local events_max = tonumber(ARGV[12])
local credential = ARGV[13]
local requester_key = KEYS[14]
local quotas_key = KEYS[15]
local policies_key = KEYS[16]
local roles_key = KEYS[17]
local pending_quota = ARGV[14]

local expected = consensus_types(k)
-- Read only, but read after the first write (the policy's voter roles).
expected[policies_key], expected[roles_key] = 'hash', 'hash'
if idempotency_key then expected[idempotency_key] = 'hash' end
local wrong = wrong_type(expected)
if wrong then return wrong end

if not agent_credential_ok(requester_key, credential) then return {BAD_CREDENTIAL} end
act(requester_id, credential)
local now_ms, now_us = clock()
if idempotency_key then
  local seen = redis.call('HGET', idempotency_key, 'fingerprint')
  if seen and seen ~= fingerprint then return {IDEMPOTENCY_KEY_REUSED} end
  if seen then return {REPLAYED, redis.call('HGETALL', idempotency_key)} end
end
if redis.call('EXISTS', k.cons) == 1 then
  return consensus_reply(OK, k, now_ms, now_us, window_ms, retention_ms, events_max)
end
local live = liveness(k.heartbeats, requester_id, now_ms, window_ms)
if live == nil then return {AGENT_NOT_FOUND} end
if not live then return {AGENT_INACTIVE} end
local limit = quota(quotas_key, 'pendingConsensus', pending_quota)
if redis.call('ZCOUNT', k.due, '(' .. int(now_ms), '+inf') >= limit then
  return {QUOTA_EXCEEDED, 'pendingConsensus', limit}
end

local expires_ms = now_ms + timeout_ms
local policy_value = redis.call('HGET', policies_key, action) or ''
local policy = policy_parse(policy_value)
redis.call('HSET', k.cons, 'id', consensus_id, 'requestingAgentId', requester_id, 'action', action,
  'contactEmail', contact, 'reason', reason, 'status', 'pending',
  'createdAt', int(now_ms), 'expiresAt', int(expires_ms), 'electorateAt', int(now_us))
if policy_value ~= '' then redis.call('HSET', k.cons, 'policy', policy_value) end
redis.call('PEXPIREAT', k.cons, int(expires_ms + retention_ms))
if policy.roles ~= '' then
  -- The members: the agents active now, of a voter role, other than the requester.
  local roles = {}
  for role in string.gmatch(policy.roles, '[^\n]+') do roles[role] = true end
  sweep_lapsed(k, now_ms, now_us, window_ms)
  local active = redis.call('ZRANGE', k.since, 0, -1)
  for i = 1, #active, 1000 do
    local ids = {unpack(active, i, math.min(i + 999, #active))}
    local of = redis.call('HMGET', roles_key, unpack(ids))
    for j, agent_id in ipairs(ids) do
      if roles[of[j]] and agent_id ~= requester_id then redis.call('SADD', k.electorate, agent_id) end
    end
  end
  redis.call('PEXPIREAT', k.electorate, int(expires_ms + retention_ms))
end
redis.call('ZADD', k.all, int(now_ms), consensus_id)
redis.call('ZADD', k.pending, int(now_ms), consensus_id)
redis.call('ZADD', k.due, int(expires_ms), consensus_id)
for _, list in ipairs({k.all, k.approved, k.rejected, k.expired}) do
  redis.call('ZREMRANGEBYSCORE', list, '-inf', '(' .. int(now_ms - max_age_ms))
end
emit(k.events, events_max, 'consensus.requested', 'consensusId', consensus_id, 'agentId', requester_id,
  'action', action, 'contactEmail', contact, 'expiresAt', int(expires_ms))
local reply = consensus_reply(CREATED, k, now_ms, now_us, window_ms, retention_ms, events_max)
if idempotency_key then
  -- The first answer as it was: the request's fields and its tally at creation.
  redis.call('HSET', idempotency_key, 'fingerprint', fingerprint, 'eligible', reply[6], 'needed', reply[7],
    unpack(reply[2]))
  redis.call('PEXPIRE', idempotency_key, idempotency_ms)
end
return reply
