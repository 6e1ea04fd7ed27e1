-- GET /auth/verify with the lines of PAIRS_FILE in turn: "<scheme> <access token> [<proof>]"
-- (bench/dpop.py). Thread i (of WRK_THREADS) takes lines i, i + WRK_THREADS, ...; each line
-- is sent once while the thread has lines left (a DPoP proof is good once). VERIFY_PATH: another
-- path than /auth/verify (bench.ceiling's B1 and B1P).
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS"))
  lines, sent = {}, 0
  path = os.getenv("VERIFY_PATH") or "/auth/verify"
  local line_no = 0
  for line in io.lines(os.getenv("PAIRS_FILE")) do
    if line_no % threads == idx - 1 then lines[#lines + 1] = line end
    line_no = line_no + 1
  end
end
function request()
  sent = sent + 1
  local scheme, token, proof = lines[((sent - 1) % #lines) + 1]:match("^(%S+) (%S+) ?(%S*)$")
  local headers = {["Authorization"] = scheme .. " " .. token}
  if proof ~= "" then headers["DPoP"] = proof end
  return wrk.format("GET", path, headers)
end
