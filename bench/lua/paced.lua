-- A steady stream instead of a flood: each connection waits PACE_MS between requests, so the
-- load generator does not itself take the CPU that the measured contention is about.
local pace = tonumber(os.getenv("PACE_MS") or "10")
function delay()
  return pace
end
