-- Refresh rotation chains offered at a fixed rate, for the overload benchmark (bench.overload).
--
-- Tokens: as refresh_chain.lua (TOKENS_FILE, WRK_THREADS), but a token answered 503 goes back
-- in the queue: the service refused it before reading it. Each request carries X-Request-ID
-- "r<n>", echoed in every answer (503s included), which names the token it sent and its send time.
--
-- Rate: RATE (requests/s over all threads; 0 = each connection sends again as soon as it is
-- answered). Each thread keeps its own schedule, one slot every WRK_THREADS / RATE seconds, and
-- delay() holds the next request to its slot: an open-loop arrival stream, as long as enough
-- connections are idle (late slots are sent at once rather than skipped).
--
-- Latency: wrk's own statistics mix the answers; this script times each answer from the
-- moment wrk builds the request to its response, by status, and done() writes
-- "<status> <seconds>" lines to LATENCY_FILE.
local ffi = require("ffi")
ffi.cdef [[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end

local threads_seen = {}
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
  table.insert(threads_seen, thread)
end

function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS"))
  local rate = tonumber(os.getenv("RATE") or "0")
  interval = rate > 0 and threads / rate or 0
  next_slot = nil
  queue, head, tail, sent, n = {}, 1, 0, {}, 0
  samples = {}
  if idx == 1 then
    tail = 1
    queue[tail] = "unsent" -- taken by wrk's script check, never sent (see refresh_chain.lua)
  end
  local line_no = 0
  for line in io.lines(os.getenv("TOKENS_FILE")) do
    if line_no % threads == idx - 1 then
      tail = tail + 1
      queue[tail] = line
    end
    line_no = line_no + 1
  end
end

function delay()
  if interval == 0 then
    return 0
  end
  local t = now()
  -- A schedule more than a second behind (every connection busy) restarts from now rather
  -- than sending its backlog in one burst.
  if next_slot == nil or next_slot < t - 1 then
    next_slot = t
  end
  local slot = next_slot
  next_slot = slot + interval
  return slot > t and math.floor((slot - t) * 1000) or 0
end

function request()
  local token = queue[head] or ""
  queue[head] = nil
  head = head + 1
  n = n + 1
  sent["r" .. n] = { token, now() }
  return wrk.format("POST", "/auth/refresh",
    { ["Content-Type"] = "application/json", ["X-Request-ID"] = "r" .. n },
    '{"refresh_token":"' .. token .. '"}')
end

function response(status, headers, body)
  local id = headers["x-request-id"] or headers["X-Request-ID"]
  if not id then
    return -- not an answer this script can match to its request (it would lose a token)
  end
  local entry = sent[id]
  sent[id] = nil
  if not entry then
    return
  end
  local token = entry[1]
  samples[#samples + 1] = status .. " " .. string.format("%.6f", now() - entry[2])
  if status == 200 then
    token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  end
  if (status == 200 or status == 503) and token then
    tail = tail + 1
    queue[tail] = token
  end
end

function done(summary, latency, requests)
  local out = io.open(os.getenv("LATENCY_FILE"), "w")
  out:write("duration ", summary.duration / 1e6, "\n")
  for _, thread in ipairs(threads_seen) do
    for _, line in ipairs(thread:get("samples")) do
      out:write(line, "\n")
    end
  end
  out:close()
end
