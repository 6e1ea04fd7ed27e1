-- Refresh-token rotation chains, several per wrk thread, one per connection on average.
-- TOKENS_FILE holds one refresh token per line; thread i (of WRK_THREADS) takes lines i,
-- i + WRK_THREADS, ... A token is sent exactly once: each successor goes to the back of the
-- thread's queue and each request takes the front one, so a chain never sends a token twice
-- and never waits for its own connection, whichever connection carries its next request.
-- With PROOFS_FILE (one DPoP proof per line, bench/dpop.py) each request also sends the next
-- of the thread's proofs in a DPoP header: each proof once.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS"))
  path = os.getenv("REFRESH_PATH") or "/auth/refresh"  -- bench.ceiling's /b2 for the floor
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
  proofs, next_proof = {}, 1
  local proofs_file = os.getenv("PROOFS_FILE")
  if proofs_file then
    line_no = 0
    for line in io.lines(proofs_file) do
      if line_no % threads == idx - 1 then proofs[#proofs + 1] = line end
      line_no = line_no + 1
    end
  end
end
function request()
  local token = queue[head] or ""  -- empty only after an error lost a chain: a counted 401
  queue[head] = nil
  head = head + 1
  local headers = {["Content-Type"] = "application/json"}
  if proofs[next_proof] then  -- none left: no header, and the refresh is a counted 400
    headers["DPoP"] = proofs[next_proof]
    next_proof = next_proof + 1
  end
  return wrk.format("POST", path, headers, '{"refresh_token":"' .. token .. '"}')
end
function response(status, headers, body)
  local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if status == 200 and token then
    tail = tail + 1
    queue[tail] = token
  end
end
