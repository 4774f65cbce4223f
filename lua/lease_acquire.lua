--[[
  lease_acquire: grant the lease on one contact, extend the caller's own, or refuse.

  The lease is one string key per contact, set with NX and an absolute expiry
  (PXAT) when the contact is free, so an expired lease simply vanishes. A contact
  is also free when its holder has stopped heartbeating: an inactive holder's
  lease protects nothing and is taken over.

  Every grant takes a fencing token larger than any before in the tenant and never
  below Redis's time in microseconds, so tokens keep growing even after Redis
  restarts empty. The lease's id is made of its holder and its token (keys.py
  lease_id), so an extension, which keeps the token, keeps the id.

  KEYS[1] agent_key       keys.agent(tenant, agent_id)            hash (read: agentName)
  KEYS[2] heartbeats_key  keys.heartbeats(tenant)                 zset
  KEYS[3] lease_key       keys.lease(tenant, contact)             string
  KEYS[4] registry_key    keys.lease_registry(tenant, agent_tag(agent_id))   hash token -> "expiresAt:contact"
  KEYS[5] fence_key       keys.fence(tenant)                      string, the last token
  KEYS[6] events_key      keys.events(tenant)                     stream: lease.acquired | lease.renewed | lease.taken_over
  KEYS[7] quotas_key      keys.quotas(tenant)                     hash (read: leasesPerAgent)
  KEYS[8] suppressions_key  keys.suppressions(tenant)             hash (read: the contact's and its domain's entries)

  ARGV[1] agent_id
  ARGV[2] contact         normalized address
  ARGV[3] intent          '' for none (an extension keeps the current intent)
  ARGV[4] duration_ms     milliseconds
  ARGV[5] window_ms       heartbeat liveness window, milliseconds
  ARGV[6] events_max      the event stream's cap, entries (0: no events)
  ARGV[7] credential      SHA-256 hex of the agent's credential (lib.lua agent_credential_ok: never '')
  ARGV[8] leases_quota    the deployment's default quota of leases per agent (lib.lua quota)

  Replies:
    {CREATED, lease..., previousHolderId}   granted (lease: see lib.lua lease_reply); the
                          previous holder is '' for a free contact, else the inactive agent
                          whose lease was taken over
    {OK, lease...}        the caller's own lease, same token, expiry now + duration
    {LEASE_CONFLICT, holderId, holderName, intent, expiresAt}
    {BAD_CREDENTIAL}      not the agent's current credential (or no such agent)
    {SUPPRESSED, entry, suppression}  the contact or its domain is suppressed (lib.lua
                          suppression_of), also for the holder's own lease: nothing written
    {QUOTA_EXCEEDED, 'leasesPerAgent', quota}  a new lease, and the agent holds that many
                          live ones (its registry's entries not yet expired); nothing written
    {AGENT_NOT_FOUND} | {AGENT_INACTIVE}
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local agent_key = KEYS[1]
local heartbeats_key = KEYS[2]
local lease_key = KEYS[3]
local registry_key = KEYS[4]
local fence_key = KEYS[5]
local events_key = KEYS[6]
local quotas_key = KEYS[7]
local suppressions_key = KEYS[8]
local agent_id = ARGV[1]
local contact = ARGV[2]
local intent = ARGV[3]
local duration_ms = tonumber(ARGV[4])
local window_ms = tonumber(ARGV[5])
local events_max = tonumber(ARGV[6])
local credential = ARGV[7]
local leases_quota = ARGV[8]

local wrong = wrong_type({[lease_key] = 'string', [registry_key] = 'hash', [fence_key] = 'string', [events_key] = 'stream'})
if wrong then return wrong end

if not agent_credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end
act(agent_id, credential)
local now_ms, now_us = clock()
local agent_name = redis.call('HGET', agent_key, 'agentName')
if not agent_name then return {AGENT_NOT_FOUND} end
if not is_active(heartbeats_key, agent_id, now_ms, window_ms) then return {AGENT_INACTIVE} end
local entry, suppression = suppression_of(suppressions_key, contact)
if entry then return {SUPPRESSED, entry, suppression} end

local expires_ms = now_ms + duration_ms
local held = lease_parse(redis.call('GET', lease_key))
if held and held.holder == agent_id then
  -- A retried or repeated acquire by the holder: same lease, same token, later expiry.
  if intent ~= '' then held.intent = intent end
  redis.call('SET', lease_key, lease_value(held), 'PXAT', int(expires_ms))
  registry_put(registry_key, held.token, contact, expires_ms, now_ms)
  emit(events_key, events_max, 'lease.renewed', 'agentId', agent_id, 'contactEmail', contact,
    'fencingToken', held.token, 'expiresAt', int(expires_ms))
  return lease_reply(OK, held, expires_ms)
end
if held and is_active(heartbeats_key, held.holder, now_ms, window_ms) then
  return {LEASE_CONFLICT, held.holder, held.name, held.intent, redis.call('PEXPIRETIME', lease_key)}
end

-- A new lease counts against the agent's quota: its registry holds an entry per lease
-- (expired ones linger until sampled out), so it is cleaned only when it looks full.
local limit = quota(quotas_key, 'leasesPerAgent', leases_quota)
if redis.call('HLEN', registry_key) >= limit then
  local entries, live = redis.call('HGETALL', registry_key), 0
  for i = 2, #entries, 2 do
    if tonumber(string.match(entries[i], '^(%d+):')) >= now_ms then live = live + 1 end
  end
  if live >= limit then return {QUOTA_EXCEEDED, 'leasesPerAgent', limit} end
  for i = 1, #entries, 2 do
    if tonumber(string.match(entries[i + 1], '^(%d+):')) < now_ms then redis.call('HDEL', registry_key, entries[i]) end
  end
end

local token = math.max(tonumber(redis.call('GET', fence_key) or '0') + 1, now_us)
redis.call('SET', fence_key, int(token))
local lease = {holder = agent_id, token = int(token), acquired = int(now_ms), name = agent_name, intent = intent}
local grant = {'agentId', agent_id, 'agentName', agent_name, 'contactEmail', contact,
  'fencingToken', lease.token, 'expiresAt', int(expires_ms), 'intent', intent}
if held then
  -- Taken over from a holder that stopped heartbeating.
  redis.call('SET', lease_key, lease_value(lease), 'PXAT', int(expires_ms))
  emit(events_key, events_max, 'lease.taken_over', 'previousAgentId', held.holder,
    'previousFencingToken', held.token, unpack(grant))
else
  redis.call('SET', lease_key, lease_value(lease), 'PXAT', int(expires_ms), 'NX')
  emit(events_key, events_max, 'lease.acquired', unpack(grant))
end
registry_put(registry_key, lease.token, contact, expires_ms, now_ms)
local reply = lease_reply(CREATED, lease, expires_ms)
reply[#reply + 1] = held and held.holder or ''
return reply
