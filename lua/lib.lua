--[[
  lib: helpers and reply codes shared by every script in this folder.

  concord/server/store/scripts.py sends each script with the head of this file (up to
  the first helper: the reply codes and ACTOR) and the helpers it calls, each with
  the helpers it calls in turn, so each script reaches Redis whole and
  self-contained, without the closures it would never call (each costs Redis time
  on every call). A helper is a top-level "local function name(" with its comment
  lines just above it. Nothing here builds a key
  name: every helper takes the keys its caller received in KEYS.

  Reply codes (the first element of every reply; concord/server/store/replies.py: Reply):
]]
local OK = 0
local CREATED = 1
local RETRY = 3            -- the store's read before the call is stale; nothing was written
local REPLAYED = 4         -- consensus_request: this Idempotency-Key was seen; the first answer again
local AGENT_NOT_FOUND = -1
local AGENT_INACTIVE = -2
local LEASE_CONFLICT = -3
local LEASE_NOT_FOUND = -4
local NOT_LEASE_HOLDER = -5
local STALE_FENCING_TOKEN = -6
local CONSENSUS_NOT_FOUND = -7
local REQUESTER_CANNOT_VOTE = -8
local ALREADY_VOTED = -9
local CONSENSUS_CLOSED = -10
local RATE_LIMITED = -11
local IDEMPOTENCY_KEY_REUSED = -12
local ROLE_NOT_ALLOWED = -13       -- agent_register: the enrolling key may not register this role
local BAD_CREDENTIAL = -14         -- the agent credential is not the agent's current one; nothing written
local NOT_ELIGIBLE = -15           -- consensus_vote: the voter is not of the request's electorate
local QUOTA_EXCEEDED = -16         -- {QUOTA_EXCEEDED, quota name, its value}: nothing written
local KIND_MISMATCH = -17          -- agent_register: the member of this name is of the other kind
local SUPPRESSED = -18             -- {SUPPRESSED, entry, suppression}: the contact, or its domain, is suppressed

-- Who the call is for, written into every event the script emits: the agent id
-- (role 'agent'), an API key's id (role 'admin', 'enroll', ...), or 'concord'
-- (role 'service') for what the clock decides. Each script sets it first.
local ACTOR, ACTOR_ROLE = '', ''

-- Redis's clock as (milliseconds, microseconds) since the epoch. Every instance of
-- the service reads the same clock, so they agree on expiry and liveness.
local function clock()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return s * 1000 + math.floor(us / 1000), s * 1000000 + us
end

-- An integer as decimal digits. tostring() would print 16-digit numbers (fencing
-- tokens) in exponent form, and Redis would store that text.
local function int(n)
  return string.format('%d', n)
end

-- Refuse keys of the wrong type before anything is written: Redis does not roll
-- a script back, so a WRONGTYPE halfway through would leave half a change.
-- `expected` maps key -> 'hash' | 'zset' | 'string'; a missing key is fine.
-- Returns an error reply for the caller to return, or nil.
local function wrong_type(expected)
  for key, kind in pairs(expected) do
    local actual = redis.call('TYPE', key)['ok']
    if actual ~= 'none' and actual ~= kind then
      return redis.error_reply('WRONGTYPE ' .. key .. ' holds a ' .. actual .. ', expected a ' .. kind)
    end
  end
end

-- Append one event to the tenant's stream, trimmed to about max_len entries (0: no
-- events). The script that makes a change writes its event, so the two are one
-- atomic step: a reader of the stream never sees a change without its event or
-- an event without its change. The entry id ('*') is Redis's time.
local function emit(events_key, max_len, event_type, ...)
  if max_len > 0 then
    redis.call('XADD', events_key, 'MAXLEN', '~', max_len, '*', 'type', event_type, 'actor', ACTOR,
      'actorRole', ACTOR_ROLE, ...)
  end
end

-- The caller acts as the agent of agent_key. `credential` is the SHA-256 hex of
-- the agent credential the request carried, or '' when an API key acts (the
-- service checked the key's role). True when the call may go on: a key, or the
-- agent's current credential. An unknown agent has no credential, so a
-- credential that claims it is refused here, before anything is read or written.
local function credential_ok(agent_key, credential)
  if credential == nil then error('the credential argument is missing') end
  return credential == '' or redis.call('HGET', agent_key, 'credential') == credential
end

-- The caller acts as the agent itself, as only an agent's own credential may
-- (heartbeat, acquire, renew, consensus request and vote): '' (an API key) is
-- refused too, so a key that reached here by a mistake of the service's still
-- cannot act as an agent (nor write a lease whose event has no actor).
local function agent_credential_ok(agent_key, credential)
  return credential ~= '' and credential_ok(agent_key, credential)
end

-- Whether an agent of `role` is one a key limited to `allowed_roles` (one per
-- line; '' for any) may register or manage.
local function role_allowed(allowed_roles, role)
  if allowed_roles == '' then return true end
  for line in string.gmatch(allowed_roles, '[^\n]+') do
    if line == role then return true end
  end
  return false
end

-- Set ACTOR for a call made with an agent credential ('' credential: an API key,
-- whose id and role the caller passed).
local function act(agent_id, credential, key_id, key_role)
  if credential ~= '' then ACTOR, ACTOR_ROLE = agent_id, 'agent' else ACTOR, ACTOR_ROLE = key_id, key_role end
end

-- A tenant's quota `name`: what an admin set in its quotas hash, else the
-- deployment's default, which the caller passes.
local function quota(quotas_key, name, default)
  return tonumber(redis.call('HGET', quotas_key, name) or default)
end

-- Active means a heartbeat strictly within the window: last > now - window.
-- liveness: nil for an agent that is not registered (the heartbeats zset holds
-- exactly the registered agents), else whether it is active; one ZSCORE.
local function liveness(heartbeats_key, agent_id, now_ms, window_ms)
  local last = redis.call('ZSCORE', heartbeats_key, agent_id)
  if last == false then return nil end
  return tonumber(last) > now_ms - window_ms
end

local function is_active(heartbeats_key, agent_id, now_ms, window_ms)
  return liveness(heartbeats_key, agent_id, now_ms, window_ms) == true
end

-- The suppression that keeps agents from a contact: the contact's own entry, else
-- its domain's ("@domain"), as (entry, "reason|setAt|setByRole|setBy|note"); nil
-- when neither is suppressed. One HMGET.
local function suppression_of(suppressions_key, contact)
  local domain = '@' .. string.match(contact, '@(.*)$')
  local found = redis.call('HMGET', suppressions_key, contact, domain)
  if found[1] then return contact, found[1] end
  if found[2] then return domain, found[2] end
end

-- The electorate. active-since (a zset) holds, for each active agent, when its
-- current run of activity began (µs); a request's electorate is the agents whose
-- run began by its electorateAt and has not ended. So an agent registered later,
-- or one that lapsed and came back, is not of it, and the tally costs
-- O(log n + votes), however large the fleet.

-- A heartbeat (or a registration) at now of an agent whose last heartbeat was
-- previous_ms (false: none): a run goes on, and nothing is written (the hot path),
-- or a new one begins. An active agent missing from active-since (a deployment
-- from before it) is put in by the rebuild that the missing lapse mark causes.
local function note_heartbeat(since_key, agent_id, previous_ms, now_ms, now_us, window_ms)
  if not previous_ms or tonumber(previous_ms) <= now_ms - window_ms then
    redis.call('ZADD', since_key, int(now_us), agent_id)
  end
end

local function zrem_all(key, members)
  for i = 1, #members, 1000 do
    redis.call('ZREM', key, unpack(members, i, math.min(i + 999, #members)))
  end
end

-- Take out of active-since every agent that has lapsed since the last sweep (the
-- lapse mark: "<ms>:<window ms>"): each agent lapses once per run, so this costs,
-- over time, O(log n) per lapse and per call. With no mark, or one of another window, it is
-- rebuilt from the heartbeats: lapsed agents out, active ones missing in (their
-- run counted from now, which admits them to no earlier electorate).
local function sweep_lapsed(k, now_ms, now_us, window_ms)
  local mark = redis.call('GET', k.mark)
  local swept_ms, swept_window
  if mark then swept_ms, swept_window = string.match(mark, '^(%d+):(%d+)$') end
  local lapsed_by = int(now_ms - window_ms)
  if swept_ms and tonumber(swept_window) == window_ms then
    -- The mark moves only when agents lapsed since it: a sweep that finds none (one
    -- range query, O(log n)) writes nothing, so reading a request stays a read.
    local lapsed = redis.call('ZRANGEBYSCORE', k.heartbeats, '(' .. int(tonumber(swept_ms) - window_ms), lapsed_by)
    if #lapsed == 0 then return end
    zrem_all(k.since, lapsed)
  else
    zrem_all(k.since, redis.call('ZRANGEBYSCORE', k.heartbeats, '-inf', lapsed_by))
    local active = redis.call('ZRANGEBYSCORE', k.heartbeats, '(' .. lapsed_by, '+inf')
    for _, agent_id in ipairs(active) do redis.call('ZADD', k.since, 'NX', int(now_us), agent_id) end
  end
  redis.call('SET', k.mark, int(now_ms) .. ':' .. int(window_ms))
end

-- Whether the agent is of the electorate fixed at electorate_us (false: a request
-- made before electorates were fixed, whose electorate is every active agent).
-- Only right after sweep_lapsed.
local function in_electorate(k, agent_id, electorate_us)
  local since = redis.call('ZSCORE', k.since, agent_id)
  return since ~= false and (not electorate_us or tonumber(since) <= tonumber(electorate_us))
end

-- A lease is one string, "<agent uuid>|<fencingToken>|<acquiredAt>|<agentName>|<intent>"
-- (the intent last: it may hold a "|"); its expiry is the key's own. The holder is
-- stored without its "agent_" prefix: six bytes per lease, in a value sized to
-- stay within a small allocation.
local function lease_parse(value)
  if not value then return nil end
  local uuid, token, acquired, name, intent = string.match(value, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|(.*)$')
  if not uuid then
    -- Only a hand-written value gets here; every caller parses before its first write.
    error('a lease key holds a value that is not a lease: ' .. string.sub(value, 1, 80))
  end
  return {holder = 'agent_' .. uuid, token = token, acquired = acquired, name = name, intent = intent}
end

local function lease_value(lease)
  return string.sub(lease.holder, 7) .. '|' .. lease.token .. '|' .. lease.acquired .. '|' .. lease.name .. '|'
    .. lease.intent
end

-- {code, agentId, agentName, intent, acquiredAt, expiresAt, fencingToken}
local function lease_reply(code, lease, expires_ms)
  return {code, lease.holder, lease.name, lease.intent, lease.acquired, int(expires_ms), lease.token}
end

-- Record a lease in its holder's registry (token -> "<expiresAt>:<contact>"), which
-- finds a lease by id and lists an agent's leases. The registry lives as long as
-- its longest lease, and each call drops up to two sampled entries of leases that
-- have expired, so a busy agent's registry does not grow with leases long gone.
local function registry_put(registry_key, token, contact, expires_ms, now_ms)
  redis.call('HSET', registry_key, token, int(expires_ms) .. ':' .. contact)
  if redis.call('PEXPIRETIME', registry_key) < expires_ms then
    redis.call('PEXPIREAT', registry_key, int(expires_ms))
  end
  local sample = redis.call('HRANDFIELD', registry_key, 2, 'WITHVALUES')
  for i = 1, #sample, 2 do
    if tonumber(string.match(sample[i + 1], '^(%d+):')) < now_ms then
      redis.call('HDEL', registry_key, sample[i])
    end
  end
end

-- The consensus scripts share one KEYS layout, named here once.
local function consensus_keys()
  return {
    cons = KEYS[1], votes = KEYS[2], heartbeats = KEYS[3], all = KEYS[4],
    pending = KEYS[5], approved = KEYS[6], rejected = KEYS[7], expired = KEYS[8], due = KEYS[9],
    events = KEYS[10], since = KEYS[11], mark = KEYS[12], electorate = KEYS[13],
  }
end

-- Every key a consensus script may write, with its type.
local function consensus_types(k)
  return {
    [k.cons] = 'hash', [k.votes] = 'hash', [k.all] = 'zset', [k.pending] = 'zset',
    [k.approved] = 'zset', [k.rejected] = 'zset', [k.expired] = 'zset', [k.due] = 'zset',
    [k.events] = 'stream', [k.since] = 'zset', [k.mark] = 'string', [k.electorate] = 'set',
  }
end

-- Votes are stored as "approve|<votedAt, microseconds>|<agentName>|<reason>", an
-- agent's under its id, a human's under "h:" .. its id.
local function vote_of(record)
  return string.match(record, '^(%a+)|')
end

-- A consensus policy as the policies hash and a request's `policy` field hold it:
-- "<rule>|<minVotes>|<humanApprovals>|<updatedAt ms>|<updatedBy>|<voter roles, one
-- per line>"; false or '' is the default: a majority of the active agents.
local function policy_parse(value)
  if not value or value == '' then return {rule = 'majority', min_votes = 0, humans = 0, roles = ''} end
  local rule, min_votes, humans, roles = string.match(value, '^([%a_]+)|(%d+)|(%d+)|[^|]*|[^|]*|(.*)$')
  if not rule then error('a consensus policy holds a value that is not a policy: ' .. string.sub(value, 1, 80)) end
  return {rule = rule, min_votes = tonumber(min_votes), humans = tonumber(humans), roles = roles}
end

-- The approvals an electorate of `eligible` agents must give under `rule`, and the
-- rejections that reject: for a majority the seed's rule (as many rejections as
-- approvals needed); for the others, enough that the approvals needed can no
-- longer come.
local function thresholds(rule, eligible)
  local needed
  if rule == 'unanimous' then
    needed = math.max(1, eligible)
  elseif rule == 'two_thirds' then
    needed = math.max(1, math.floor((2 * eligible + 2) / 3))
  else
    return math.floor(eligible / 2) + 1, math.floor(eligible / 2) + 1
  end
  return needed, math.max(1, eligible - needed + 1)
end

-- Tally a request as of now. Agents: approvals, rejections, and, within its
-- electorate, eligible = members still active other than the requester + members
-- who have voted and are no longer active (a cast vote stands); with voter roles,
-- the members are those the request's electorate set names. Humans: their
-- approvals and rejections. Returns approve, reject, eligible, needed, rejections
-- that reject, human approve, human reject.
local function consensus_tally(k, requester, electorate_us, policy, now_ms, now_us, window_ms)
  sweep_lapsed(k, now_ms, now_us, window_ms)
  local approve, reject, lapsed, human_approve, human_reject = 0, 0, 0, 0, 0
  local votes = redis.call('HGETALL', k.votes)
  for i = 1, #votes, 2 do
    local approves = vote_of(votes[i + 1]) == 'approve'
    if string.sub(votes[i], 1, 2) == 'h:' then
      if approves then human_approve = human_approve + 1 else human_reject = human_reject + 1 end
    else
      if approves then approve = approve + 1 else reject = reject + 1 end
      if not in_electorate(k, votes[i], electorate_us) then lapsed = lapsed + 1 end
    end
  end
  local active = 0
  if policy.roles ~= '' then
    for _, member in ipairs(redis.call('SMEMBERS', k.electorate)) do
      if in_electorate(k, member, electorate_us) then active = active + 1 end
    end
  else
    active = redis.call('ZCOUNT', k.since, '-inf', electorate_us or '+inf')
    if in_electorate(k, requester, electorate_us) then active = active - 1 end
  end
  local eligible = active + lapsed
  local needed, rejecting = thresholds(policy.rule, eligible)
  return approve, reject, eligible, needed, rejecting, human_approve, human_reject
end

-- A request as a consensus script finds it: its hash's fields, its policy, and its
-- tally as of now (consensus_tally), as one table that consensus_decide and
-- consensus_answer take, so a vote tallies its request once.
local function consensus_state(k, now_ms, now_us, window_ms)
  local c = redis.call('HMGET', k.cons, 'id', 'status', 'requestingAgentId', 'createdAt', 'expiresAt', 'eligible',
    'needed', 'electorateAt', 'policy')
  local s = {id = c[1], status = c[2], requester = c[3], created_ms = c[4], expires_ms = tonumber(c[5]),
    electorate_us = c[8], policy = policy_parse(c[9])}
  s.approve, s.reject, s.eligible, s.needed, s.rejecting, s.human_approve, s.human_reject =
    consensus_tally(k, s.requester, s.electorate_us, s.policy, now_ms, now_us, window_ms)
  if s.status ~= 'pending' then s.eligible, s.needed = tonumber(c[6]), tonumber(c[7]) end
  return s
end

-- Decide a pending request (s: consensus_state) if its votes or its deadline say so;
-- a decided one is final, and its eligible/needed are frozen as they were at the
-- decision; the decision's event (consensus.resolved or consensus.expired) is
-- written with it. Under its policy: nothing is decided with fewer than minVotes
-- votes cast, but a human's rejection, where humans are asked, rejects at once;
-- approval needs the agents' rule (met by no agent when the agent electorate is
-- empty and humans are asked) and humanApprovals human approvals. Returns whether
-- this call decided it (s.status is then the decision).
local function consensus_decide(k, s, now_ms, retention_ms, events_max)
  if s.status ~= 'pending' then return false end
  local policy = s.policy
  local quorum = s.approve + s.reject + s.human_approve + s.human_reject >= policy.min_votes
  local agents_approve = s.approve >= s.needed or (s.eligible == 0 and policy.humans > 0)
  local status, resolved_ms = nil, now_ms
  if now_ms >= s.expires_ms then
    status, resolved_ms = 'expired', s.expires_ms
  elseif (policy.humans > 0 and s.human_reject > 0) or (quorum and s.reject >= s.rejecting) then
    status = 'rejected'
  elseif quorum and agents_approve and s.human_approve >= policy.humans then
    status = 'approved'
  else
    return false
  end
  s.status = status
  redis.call('HSET', k.cons, 'status', status, 'resolvedAt', int(resolved_ms), 'eligible', s.eligible,
    'needed', s.needed)
  redis.call('ZREM', k.pending, s.id)
  redis.call('ZREM', k.due, s.id)
  redis.call('ZADD', k[status], s.created_ms, s.id)
  for _, key in ipairs({k.cons, k.votes, k.electorate}) do
    redis.call('PEXPIREAT', key, int(resolved_ms + retention_ms))
  end
  local event = status == 'expired' and 'consensus.expired' or 'consensus.resolved'
  emit(k.events, events_max, event, 'consensusId', s.id, 'agentId', s.requester, 'status', status,
    'approve', s.approve, 'reject', s.reject, 'eligible', s.eligible, 'needed', s.needed)
  return true
end

-- consensus_state, then consensus_decide: the request as of now, decided if it is.
local function consensus_settle(k, now_ms, now_us, window_ms, retention_ms, events_max)
  local s = consensus_state(k, now_ms, now_us, window_ms)
  return s, consensus_decide(k, s, now_ms, retention_ms, events_max)
end

-- {code, {consensus hash flat}, {votes hash flat}, approve, reject, eligible, needed,
--  decided[, human approve, human reject]}: decided is 1 when this call decided the
--  request (its metrics count it), else 0; the humans' votes only once there are any.
local function consensus_answer(code, k, s, decided)
  local reply = {code, redis.call('HGETALL', k.cons), redis.call('HGETALL', k.votes), s.approve, s.reject,
    s.eligible, s.needed, decided and 1 or 0}
  if s.human_approve + s.human_reject > 0 then
    reply[9], reply[10] = s.human_approve, s.human_reject
  end
  return reply
end

-- The request settled as of now, as consensus_answer gives it.
local function consensus_reply(code, k, now_ms, now_us, window_ms, retention_ms, events_max)
  local s, decided = consensus_settle(k, now_ms, now_us, window_ms, retention_ms, events_max)
  return consensus_answer(code, k, s, decided)
end
