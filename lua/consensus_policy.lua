--[[
  consensus_policy: set or delete the consensus policy of one action, and record it
  in the tenant's event stream (an admin key's change, so the audit names the key).

  A request copies the policy in force when it is made (consensus_request), so a
  change here moves no decision in flight.

  KEYS[1] policies_key    keys.consensus_policies(tenant)   hash action -> policy (lib.lua policy_parse)
  KEYS[2] events_key      keys.events(tenant)               stream: consensus.policy_set, .policy_deleted

  ARGV[1] action
  ARGV[2] policy          "<rule>|<minVotes>|<humanApprovals>|<voter roles, one per line>";
                          '' deletes the action's policy
  ARGV[3] events_max      the event stream's cap, entries (0: no events)
  ARGV[4] key_id          the admin key (the event's actor)

  Replies:
    {OK, stored policy}     set: as stored, with updatedAt and updatedBy ('' when deleted)
    {OK, ''}                deleted, or there was none
    error WRONGTYPE      a key it would write holds another type; nothing was written
]]
local policies_key = KEYS[1]
local events_key = KEYS[2]
local action = ARGV[1]
local policy = ARGV[2]
local events_max = tonumber(ARGV[3])
local key_id = ARGV[4]

ACTOR, ACTOR_ROLE = key_id, 'admin'

local wrong = wrong_type({[policies_key] = 'hash', [events_key] = 'stream'})
if wrong then return wrong end

if policy == '' then
  if redis.call('HDEL', policies_key, action) == 1 then
    emit(events_key, events_max, 'consensus.policy_deleted', 'action', action)
  end
  return {OK, ''}
end
local rule, min_votes, humans, roles = string.match(policy, '^([%a_]+)|(%d+)|(%d+)|(.*)$')
if not rule then error('not a consensus policy: ' .. string.sub(policy, 1, 80)) end
local now_ms = clock()
local stored = table.concat({rule, min_votes, humans, int(now_ms), key_id, roles}, '|')
redis.call('HSET', policies_key, action, stored)
emit(events_key, events_max, 'consensus.policy_set', 'action', action, 'policy', stored)
return {OK, stored}
