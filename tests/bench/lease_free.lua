-- lease_free.lua: POST /v1/agent/coordination/lease on a contact nobody ever asked for:
-- every request a new contact (tag and request number), the agents in turn (201).
-- agents=<file>: one agent id per line; each asks with its own credential (credentials=<file>).
local bench = dofile("tests/bench/common.lua")
local agents

function init(args)
  local options = bench.init(args)
  agents = bench.column(options.agents)
  bench.credentials(options.credentials)
end

function request()
  local n = bench.next()
  local agent = agents[n % #agents + 1]
  local contact = bench.tag .. "-" .. n .. "@fresh.bench.example"
  return bench.post("/v1/agent/coordination/lease",
    '{"agentId":"' .. agent .. '","contactEmail":"' .. contact .. '","intent":"outbound_sales"}', agent)
end
