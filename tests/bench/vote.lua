-- vote.lua: POST /v1/agent/coordination/consensus/{id}/vote, every request a fresh
-- (request, voter) pair, so every vote is counted and none is a repeat (200, still pending).
--
-- Request r of requests=<file> ("consensusId requesterIndex" per line, made for this
-- run) takes per=<n> votes: voter j is the agent after its requester plus j in
-- agents=<file>, approving when j is even and rejecting when odd, with its own credential
-- (credentials=<file>). With many active agents `needed` is far above per/2, so no
-- request is decided during the run.
local bench = dofile("tests/bench/common.lua")
local agents, requests, per

function init(args)
  local options = bench.init(args)
  agents = bench.column(options.agents)
  bench.credentials(options.credentials)
  requests = bench.rows(options.requests)
  per = tonumber(options.per)
end

function request()
  local n = bench.next()
  local r, j = math.floor(n / per), n % per
  if r >= #requests then
    bench.exhausted()
    r = r % #requests
  end
  local row = requests[r + 1]
  local voter = agents[(tonumber(row[2]) + 1 + j) % #agents + 1]
  local choice = (j % 2 == 0) and "approve" or "reject"
  return bench.post("/v1/agent/coordination/consensus/" .. row[1] .. "/vote",
    '{"agentId":"' .. voter .. '","vote":"' .. choice .. '"}', voter)
end
