--[[
  consensus_vote: record one agent's vote and decide the request if it is now decided.

  One vote per member: the same vote again is answered as the first was (so a retry
  of the vote that decided a request still succeeds); another vote is refused.
  An agent votes while active and of the request's electorate (with voter roles,
  its electorate set); a human (kind human in its hash) needs no heartbeat, and
  votes where the request's policy asks for human approvals, if it was registered
  by electorateAt. A human's vote is kept under "h:" .. its id.

  KEYS[1]  cons_key        keys.consensus(tenant, id)               hash
  KEYS[2]  votes_key       keys.votes(tenant, id)                   hash agentId -> vote record
  KEYS[3]  heartbeats_key  keys.heartbeats(tenant)                  zset
  KEYS[4]  all_key         keys.consensus_list(tenant, 'all')       zset id -> createdAt
  KEYS[5]  pending_key     keys.consensus_list(tenant, 'pending')   zset id -> createdAt
  KEYS[6]  approved_key    keys.consensus_list(tenant, 'approved')  zset id -> createdAt
  KEYS[7]  rejected_key    keys.consensus_list(tenant, 'rejected')  zset id -> createdAt
  KEYS[8]  expired_key     keys.consensus_list(tenant, 'expired')   zset id -> createdAt
  KEYS[9]  due_key         keys.consensus_due(tenant)               zset id -> expiresAt
  KEYS[10] events_key      keys.events(tenant)                      stream: consensus.voted, .resolved, .expired
  KEYS[11] since_key       keys.active_since(tenant)                zset agentId -> run start µs (swept)
  KEYS[12] mark_key        keys.lapse_mark(tenant)                  string
  KEYS[13] electorate_key  keys.electorate(tenant, id)              set (read)
  KEYS[14] voter_key       keys.agent(tenant, agent_id)             hash (read: agentName, kind)
  KEYS[15] humans_key      keys.humans(tenant)                      zset humanId -> registeredAt µs (read)

  ARGV[1] agent_id        the voter (an agent or a human)
  ARGV[2] vote            'approve' | 'reject'
  ARGV[3] reason          '' for none
  ARGV[4] window_ms       heartbeat liveness window, milliseconds
  ARGV[5] retention_ms    how long a decided request is kept
  ARGV[6] events_max      the event stream's cap, entries (0: no events)
  ARGV[7] credential      SHA-256 hex of the voter's credential (lib.lua agent_credential_ok: never '')

  Replies:
    {CREATED, consensus...}  the vote is counted now (consensus: see lib.lua consensus_reply)
    {OK, consensus...}     the same vote was counted before (by an earlier run, or an earlier call)
    {BAD_CREDENTIAL}       not the voter's current credential (or no such agent)
    {CONSENSUS_NOT_FOUND} | {AGENT_NOT_FOUND} | {REQUESTER_CANNOT_VOTE} | {AGENT_INACTIVE}
    {NOT_ELIGIBLE, electorateAt µs, why}  not of the request's electorate; why: 'later'
                           (registered after the request was made, or lapsed and back
                           since), 'role' (not of the policy's voter roles), 'human'
                           (a human, and the policy asks for no human approval)
    {ALREADY_VOTED, the agent's earlier vote}
    {CONSENSUS_CLOSED, status}
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local k = consensus_keys()
local voter_key = KEYS[14]
local humans_key = KEYS[15]
local agent_id = ARGV[1]
local vote = ARGV[2]
local reason = ARGV[3]
local window_ms = tonumber(ARGV[4])
local retention_ms = tonumber(ARGV[5])
local events_max = tonumber(ARGV[6])
local credential = ARGV[7]

local expected = consensus_types(k)
expected[humans_key] = 'zset'  -- read only, but only once the vote is checked
local wrong = wrong_type(expected)
if wrong then return wrong end

if not agent_credential_ok(voter_key, credential) then return {BAD_CREDENTIAL} end
-- What is settled before this vote counts (the deadline passed, voters lapsed) is the
-- clock's doing; what this vote decides is the voter's.
ACTOR, ACTOR_ROLE = 'concord', 'service'
local now_ms, now_us = clock()
local requester = redis.call('HGET', k.cons, 'requestingAgentId')
if not requester then return {CONSENSUS_NOT_FOUND} end
local voter = redis.call('HMGET', voter_key, 'agentName', 'kind')
local agent_name, human = voter[1], voter[2] == 'human'
if not agent_name then return {AGENT_NOT_FOUND} end
if agent_id == requester then return {REQUESTER_CANNOT_VOTE} end

local field = human and ('h:' .. agent_id) or agent_id
local earlier = redis.call('HGET', k.votes, field)
if earlier then
  if vote_of(earlier) ~= vote then return {ALREADY_VOTED, vote_of(earlier)} end
  return consensus_reply(OK, k, now_ms, now_us, window_ms, retention_ms, events_max)
end
local s = consensus_settle(k, now_ms, now_us, window_ms, retention_ms, events_max)
if s.status ~= 'pending' then return {CONSENSUS_CLOSED, s.status} end
local electorate_us, policy = s.electorate_us, s.policy
if human then
  if policy.humans == 0 then return {NOT_ELIGIBLE, electorate_us, 'human'} end
  local since = redis.call('ZSCORE', humans_key, agent_id)
  if not since or tonumber(since) > tonumber(electorate_us) then return {NOT_ELIGIBLE, electorate_us, 'later'} end
else
  if not is_active(k.heartbeats, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end
  if not in_electorate(k, agent_id, electorate_us) then return {NOT_ELIGIBLE, electorate_us, 'later'} end
  if policy.roles ~= '' and redis.call('SISMEMBER', k.electorate, agent_id) == 0 then
    return {NOT_ELIGIBLE, electorate_us, 'role'}
  end
end
act(agent_id, credential)
if human then ACTOR_ROLE = 'human' end

-- Microseconds, so that votes list in the order they were cast.
redis.call('HSET', k.votes, field, vote .. '|' .. int(now_us) .. '|' .. agent_name .. '|' .. reason)
redis.call('PEXPIREAT', k.votes, int(s.expires_ms + retention_ms))
emit(k.events, events_max, 'consensus.voted', 'consensusId', s.id, 'agentId', agent_id,
  'agentName', agent_name, 'vote', vote)
-- The tally with this vote, without tallying again: the voter was an active member
-- (or a human, who is of no agent count), so eligible and needed stay as they are.
local approves = vote == 'approve'
if human then
  if approves then s.human_approve = s.human_approve + 1 else s.human_reject = s.human_reject + 1 end
else
  if approves then s.approve = s.approve + 1 else s.reject = s.reject + 1 end
end
return consensus_answer(CREATED, k, s, consensus_decide(k, s, now_ms, retention_ms, events_max))
