-- send_check.lua: POST /v1/agent/coordination/send-check by each lease's holder, with its
-- fencing token, the leases in turn: 200 {"allowed":true}.
-- leases=<file>: "leaseId agentId contact fencingToken" per line.
local bench = dofile("tests/bench/common.lua")
local leases

function init(args)
  leases = bench.rows(bench.init(args).leases)
end

function request()
  local lease = leases[bench.next() % #leases + 1]
  return bench.post("/v1/agent/coordination/send-check",
    '{"agentId":"' .. lease[2] .. '","contactEmail":"' .. lease[3] .. '","fencingToken":' .. lease[4] .. '}')
end
