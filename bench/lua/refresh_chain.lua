-- Refresh-token rotation chains, several per wrk thread, one per connection on average.
-- TOKENS_FILE holds one refresh token per line; thread i (of WRK_THREADS) takes lines i,
-- i + WRK_THREADS, ... A token is sent exactly once: each successor goes to the back of the
-- thread's queue and each request takes the front one, so a chain never sends a token twice
-- and never waits for its own connection, whichever connection carries its next request.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS"))
  queue, head, tail = {}, 1, 0
  if idx == 1 then
    -- At start-up wrk builds one request on the first thread to check the script
    -- (script_verify_request) and never sends it: that call takes this placeholder.
    tail = 1
    queue[tail] = "unsent"
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
function request()
  local token = queue[head] or ""  -- empty only after an error lost a chain: a counted 401
  queue[head] = nil
  head = head + 1
  return wrk.format("POST", "/auth/refresh", {["Content-Type"] = "application/json"},
                    '{"refresh_token":"' .. token .. '"}')
end
function response(status, headers, body)
  local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if status == 200 and token then
    tail = tail + 1
    queue[tail] = token
  end
end
