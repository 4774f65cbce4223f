--[[
  rate_limit: take one token from every bucket, or from none if any bucket is empty.

  Token buckets: each refills at its rate up to its burst, and a bucket that would
  be full simply expires, so an idle tenant or agent costs nothing in Redis.

  KEYS[1]   agent_key     keys.agent(tenant, agent_id)   hash of the acting agent (read: credential);
                          with an API key, any key of the tenant's slot (not read)
  KEYS[2..] bucket_keys   keys.rate_bucket(tenant[, principal])   hash tokens, at (ms)

  ARGV[1]   credential    SHA-256 hex of the agent's credential, '' for an API key: a bucket
                          is drawn from only for a principal that proved who it is
  ARGV[2..] limits        for each bucket in KEYS order, two values: its refill rate in
                          tokens per millisecond, then its burst (tokens)

  Replies:
    {OK}                  a token was taken from every bucket
    {BAD_CREDENTIAL}      not the agent's current credential; nothing taken
    {RATE_LIMITED, wait}  nothing taken; a token is due in `wait` milliseconds
    error WRONGTYPE      a bucket key holds another type; nothing was written
]]
local agent_key = KEYS[1]
local bucket_keys = {unpack(KEYS, 2)}
local credential = ARGV[1]
local limits = {unpack(ARGV, 2)}

if not credential_ok(agent_key, credential) then return {BAD_CREDENTIAL} end

local now_ms = clock()
local tokens, wait_ms = {}, 0
for i, key in ipairs(bucket_keys) do
  local rate, burst = tonumber(limits[2 * i - 1]), tonumber(limits[2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  tokens[i] = burst
  if state[1] then
    tokens[i] = math.min(burst, tonumber(state[1]) + math.max(0, now_ms - tonumber(state[2])) * rate)
  end
  if tokens[i] < 1 then wait_ms = math.max(wait_ms, math.ceil((1 - tokens[i]) / rate)) end
end
if wait_ms > 0 then return {RATE_LIMITED, wait_ms} end

for i, key in ipairs(bucket_keys) do
  local rate, burst = tonumber(limits[2 * i - 1]), tonumber(limits[2 * i])
  redis.call('HSET', key, 'tokens', tostring(tokens[i] - 1), 'at', int(now_ms))
  redis.call('PEXPIRE', key, int(math.ceil(burst / rate)))
end
return {OK}
