-- renew.lua: POST /v1/agent/coordination/lease/{leaseId}/renew by each lease's holder,
-- with its own credential (credentials=<file>), the leases in turn (200).
-- leases=<file>: "leaseId agentId contact fencingToken" per line.
local bench = dofile("tests/bench/common.lua")
local leases

function init(args)
  local options = bench.init(args)
  leases = bench.rows(options.leases)
  bench.credentials(options.credentials)
end

function request()
  local lease = leases[bench.next() % #leases + 1]
  return bench.post("/v1/agent/coordination/lease/" .. lease[1] .. "/renew",
    '{"agentId":"' .. lease[2] .. '","durationMinutes":1440}', lease[2])
end
