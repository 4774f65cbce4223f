--[[
  consensus_read: read a consensus request, deciding it first if its votes or its
  deadline say so (eligibility changes as agents lapse, so reading can decide).

  KEYS[1] cons_key        keys.consensus(tenant, id)               hash
  KEYS[2] votes_key       keys.votes(tenant, id)                   hash agentId -> vote record
  KEYS[3] heartbeats_key  keys.heartbeats(tenant)                  zset
  KEYS[4] all_key         keys.consensus_list(tenant, 'all')       zset id -> createdAt
  KEYS[5] pending_key     keys.consensus_list(tenant, 'pending')   zset id -> createdAt
  KEYS[6] approved_key    keys.consensus_list(tenant, 'approved')  zset id -> createdAt
  KEYS[7] rejected_key    keys.consensus_list(tenant, 'rejected')  zset id -> createdAt
  KEYS[8] expired_key     keys.consensus_list(tenant, 'expired')   zset id -> createdAt
  KEYS[9] due_key         keys.consensus_due(tenant)               zset id -> expiresAt
  KEYS[10] events_key      keys.events(tenant)                      stream: consensus.resolved, .expired
  KEYS[11] since_key       keys.active_since(tenant)                zset agentId -> run start µs (swept)
  KEYS[12] mark_key        keys.lapse_mark(tenant)                  string
  KEYS[13] electorate_key  keys.electorate(tenant, id)              set (read; its expiry set on a decision)
  KEYS[14] reader_key      keys.agent(tenant, reader)               hash (read: credential), for a member's
                           read; keys.agent(tenant, '') for a key's

  ARGV[1] consensus_id
  ARGV[2] window_ms       heartbeat liveness window, milliseconds
  ARGV[3] retention_ms    how long a decided request is kept
  ARGV[4] events_max      the event stream's cap, entries (0: no events)
  ARGV[5] credential      SHA-256 hex of the reader's credential; '' for an API key (whose role
                          the service checked): proven here, so a read costs no round trip more

  Replies:
    {OK, consensus...}
    {BAD_CREDENTIAL}       not the reader's current credential; nothing read or written
    {CONSENSUS_NOT_FOUND}  never made, or past retention; its list entries are dropped
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local k = consensus_keys()
local consensus_id = ARGV[1]
local window_ms = tonumber(ARGV[2])
local retention_ms = tonumber(ARGV[3])
local events_max = tonumber(ARGV[4])
local reader_key = KEYS[14]
local credential = ARGV[5]

ACTOR, ACTOR_ROLE = 'concord', 'service'  -- a read decides only what the clock or lapsed voters decide
if not credential_ok(reader_key, credential) then return {BAD_CREDENTIAL} end
local wrong = wrong_type(consensus_types(k))
if wrong then return wrong end

if redis.call('EXISTS', k.cons) == 0 then
  for _, list in ipairs({k.all, k.pending, k.approved, k.rejected, k.expired, k.due}) do
    redis.call('ZREM', list, consensus_id)
  end
  return {CONSENSUS_NOT_FOUND}
end
local now_ms, now_us = clock()
return consensus_reply(OK, k, now_ms, now_us, window_ms, retention_ms, events_max)
