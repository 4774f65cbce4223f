-- heartbeat.lua: POST /v1/agent/coordination/heartbeat for the tenant's agents in turn (200).
-- agents=<file>: one agent id per line; each beats with its own credential (credentials=<file>).
local bench = dofile("tests/bench/common.lua")
local agents

function init(args)
  local options = bench.init(args)
  agents = bench.column(options.agents)
  bench.credentials(options.credentials)
end

function request()
  local agent = agents[bench.next() % #agents + 1]
  return bench.post("/v1/agent/coordination/heartbeat", '{"agentId":"' .. agent .. '"}', agent)
end
