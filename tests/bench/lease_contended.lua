-- lease_contended.lua: POST /v1/agent/coordination/lease on one contact that another
-- active agent holds: every answer is 409 lease_conflict.
-- contenders=<file>: agent ids that do not hold it, each asking with its own credential
-- (credentials=<file>); contact=<the held contact>.
local bench = dofile("tests/bench/common.lua")
local agents, contact

function init(args)
  local options = bench.init(args)
  agents = bench.column(options.contenders)
  bench.credentials(options.credentials)
  contact = options.contact
end

function request()
  local agent = agents[bench.next() % #agents + 1]
  return bench.post("/v1/agent/coordination/lease",
    '{"agentId":"' .. agent .. '","contactEmail":"' .. contact .. '","intent":"outbound_sales"}', agent)
end
