-- consensus_read.lua: GET /v1/agent/coordination/consensus/{id}, pending requests with a
-- few votes each, in turn (200). reads=<file>: one consensus id per line.
local bench = dofile("tests/bench/common.lua")
local reads

function init(args)
  reads = bench.column(bench.init(args).reads)
end

function request()
  return bench.get("/v1/agent/coordination/consensus/" .. reads[bench.next() % #reads + 1])
end
