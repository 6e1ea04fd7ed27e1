-- GET /auth/verify with the access tokens of TOKENS_FILE in turn (one per line); each thread
-- stops after PER_THREAD responses, so the run is a fixed number of requests.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  tokens = {}
  for line in io.lines(os.getenv("TOKENS_FILE")) do tokens[#tokens + 1] = line end
  limit = tonumber(os.getenv("PER_THREAD"))
  sent, done = idx, 0
end
function request()
  sent = sent + 1
  local token = tokens[(sent % #tokens) + 1]
  return wrk.format("GET", "/auth/verify", {["Authorization"] = "Bearer " .. token})
end
function response(status, headers, body)
  done = done + 1
  if done >= limit then wrk.thread:stop() end
end
