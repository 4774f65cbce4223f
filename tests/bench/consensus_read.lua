-- consensus_read.lua: GET /v1/agent/coordination/consensus/{id}, pending requests with a
-- few votes each, in turn (200), read by the agents in turn, each with its own credential.
-- reads=<file>: one consensus id per line; agents=<file>, credentials=<file>.
local bench = dofile("tests/bench/common.lua")
local reads, agents

function init(args)
  local options = bench.init(args)
  reads = bench.column(options.reads)
  agents = bench.column(options.agents)
  bench.credentials(options.credentials)
end

function request()
  local n = bench.next()
  return bench.get("/v1/agent/coordination/consensus/" .. reads[n % #reads + 1], agents[n % #agents + 1])
end
