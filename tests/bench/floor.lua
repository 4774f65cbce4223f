-- floor.lua: GET / on the floor app (floor.py), built and counted like every operation.
local bench = dofile("tests/bench/common.lua")

function init(args)
  bench.init(args)
end

function request()
  bench.next()
  return bench.get("/")
end
