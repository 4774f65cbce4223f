-- register.lua: POST /v1/agent/register, re-registering the tenant's existing agents
-- in turn (an upsert: 200). names=<file>: one registered agent name per line.
local bench = dofile("tests/bench/common.lua")
local names

function init(args)
  names = bench.column(bench.init(args).names)
end

function request()
  local name = names[bench.next() % #names + 1]
  return bench.post("/v1/agent/register", '{"agentName":"' .. name .. '","agentRole":"sdr"}')
end
