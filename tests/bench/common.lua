--[[
  common.lua: what every request script of the benchmark shares (wrk 4, LuaJIT).

  An operation's script (heartbeat.lua, vote.lua, ...) loads this file, calls
  bench.init(args) from its init() and defines request(); this file defines
  setup(), response() and done() for all of them, so every run -- the floor's too --
  costs wrk the same per request: one request string built from a template,
  and one status count per response.

  A request an agent makes goes with that agent's own credential, as a fleet's
  would: bench.credentials(file) builds each agent's template once, and
  bench.post(path, body, agent) / bench.get(path, agent) pick it, at the cost of
  one table lookup. Without an agent a request carries key=.

  Arguments (after wrk's `--`, as name=value):
    key=<credential>        sent as Authorization: Bearer on requests made for no agent
                            (an API key: register; a credential of the same length: the floor)
    threads=<n>             wrk's -t, so request numbers are unique across threads
    tag=<text>              unique per wrk run: fresh contacts never repeat
    expect=<status>         the answer every request should get (200, 201, 409)
    marker=<text>           optional: the body of an expected answer must contain it
    <name>=<path>           data files written by prepare.py (agents=, leases=, ...)

  done() prints one line `BENCH {json}` that run.py reads:
    requests, duration_us, rps, p50_us, p99_us, statuses {code: count},
    unmarked (expected status but the body lacked the marker), exhausted (requests
    past the prepared data), errors {connect, read, write, status, timeout}.
]]
local bench = {}

-- Set by setup() in this thread's Lua state before init() runs.
thread_index = thread_index or 0
statuses, unmarked, exhausted = {}, 0, 0

local count = 0
local expect, marker = nil, nil
local head = {}
local heads = {}  -- agent id -> its head, with its own credential
local host

function bench.init(args)
  local options = {}
  for _, arg in ipairs(args) do
    local name, value = arg:match("^([%w_]+)=(.*)$")
    assert(name, "arguments are name=value, got " .. arg)
    options[name] = value
  end
  bench.options = options
  bench.threads = tonumber(options.threads or "1")
  bench.tag = options.tag or "t"
  expect = tonumber(options.expect or "200")
  marker = options.marker
  host = "Host: " .. wrk.host .. ":" .. tostring(wrk.port) .. "\r\n"
  head = bench.head(options.key)
  return options
end

-- The fixed parts of a request around its path and body, with `token` as its bearer credential.
function bench.head(token)
  local auth = token and ("Authorization: Bearer " .. token .. "\r\n") or ""
  return {
    get = " HTTP/1.1\r\n" .. host .. auth .. "\r\n",
    post = " HTTP/1.1\r\n" .. host .. auth .. "Content-Type: application/json\r\nContent-Length: ",
  }
end

-- Load "agentId credential" rows (prepare.py credentials.txt): each agent's requests
-- then go with its own credential.
function bench.credentials(path)
  for _, row in ipairs(bench.rows(path)) do heads[row[1]] = bench.head(row[2]) end
end

local function head_of(agent)
  if agent == nil then return head end
  local found = heads[agent]
  assert(found, "no credential for agent " .. agent .. ": pass credentials=<file>")
  return found
end

-- The n-th request of the whole run (0, 1, 2, ...), numbered across threads.
function bench.next()
  local n = thread_index + count * bench.threads
  count = count + 1
  return n
end

-- A request past the prepared data: counted, and the run is reported as failed.
function bench.exhausted()
  exhausted = exhausted + 1
end

-- A request; with `agent`, made with that agent's credential (bench.credentials).
function bench.get(path, agent)
  return "GET " .. path .. head_of(agent).get
end

function bench.post(path, body, agent)
  return "POST " .. path .. head_of(agent).post .. #body .. "\r\n\r\n" .. body
end

-- Rows of a data file: each line split on spaces.
function bench.rows(path)
  assert(path, "a data file argument is missing")
  local rows = {}
  for line in io.lines(path) do
    local row = {}
    for field in line:gmatch("%S+") do row[#row + 1] = field end
    rows[#rows + 1] = row
  end
  assert(#rows > 0, path .. " is empty")
  return rows
end

-- The first field of every row.
function bench.column(path)
  local values = {}
  for i, row in ipairs(bench.rows(path)) do values[i] = row[1] end
  return values
end

local threads = {}

function setup(thread)
  thread:set("thread_index", #threads)
  threads[#threads + 1] = thread
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if marker and status == expect and not body:find(marker, 1, true) then
    unmarked = unmarked + 1
  end
end

local function json_counts(counts)
  local parts = {}
  for name, value in pairs(counts) do
    parts[#parts + 1] = string.format('"%s": %d', tostring(name), value)
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function done(summary, latency, requests)
  local total_statuses, total_unmarked, total_exhausted = {}, 0, 0
  for _, thread in ipairs(threads) do
    for code, n in pairs(thread:get("statuses")) do
      total_statuses[code] = (total_statuses[code] or 0) + n
    end
    total_unmarked = total_unmarked + thread:get("unmarked")
    total_exhausted = total_exhausted + thread:get("exhausted")
  end
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "rps": %.1f, "p50_us": %d, "p99_us": %d, '
      .. '"statuses": %s, "unmarked": %d, "exhausted": %d, "errors": %s}\n',
    summary.requests, summary.duration, summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99),
    json_counts(total_statuses), total_unmarked, total_exhausted, json_counts(summary.errors)))
end

return bench
