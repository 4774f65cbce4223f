-- send_check.lua: POST /v1/agent/coordination/send-check by each lease's holder, with its
-- fencing token and its own credential (credentials=<file>), the leases in turn: 200 {"allowed":true}.
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
  return bench.post("/v1/agent/coordination/send-check",
    '{"agentId":"' .. lease[2] .. '","contactEmail":"' .. lease[3] .. '","fencingToken":' .. lease[4] .. '}',
    lease[2])
end
