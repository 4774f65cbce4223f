-- renew.lua: POST /v1/agent/coordination/lease/{leaseId}/renew by each lease's holder,
-- the leases in turn (200). leases=<file>: "leaseId agentId contact fencingToken" per line.
local bench = dofile("tests/bench/common.lua")
local leases

function init(args)
  leases = bench.rows(bench.init(args).leases)
end

function request()
  local lease = leases[bench.next() % #leases + 1]
  return bench.post("/v1/agent/coordination/lease/" .. lease[1] .. "/renew",
    '{"agentId":"' .. lease[2] .. '","durationMinutes":1440}')
end
