-- heartbeat.lua: POST /v1/agent/coordination/heartbeat for the tenant's agents in turn (200).
-- agents=<file>: one agent id per line.
local bench = dofile("tests/bench/common.lua")
local agents

function init(args)
  agents = bench.column(bench.init(args).agents)
end

function request()
  local agent = agents[bench.next() % #agents + 1]
  return bench.post("/v1/agent/coordination/heartbeat", '{"agentId":"' .. agent .. '"}')
end
