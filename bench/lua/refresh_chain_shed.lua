-- refresh_chain.lua for a service that sheds load: a token answered 503 (not consumed: the
-- service refused it before reading it) goes back to the queue instead of ending its chain.
-- Each request carries X-Request-ID "r<n>" (echoed in every answer, 503s included), which
-- names the token it sent.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  local threads = tonumber(os.getenv("WRK_THREADS"))
  queue, head, tail, sent, n = {}, 1, 0, {}, 0
  if idx == 1 then
    tail = 1
    queue[tail] = "unsent"  -- taken by wrk's script check, never sent (see refresh_chain.lua)
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
  local token = queue[head] or ""
  queue[head] = nil
  head = head + 1
  n = n + 1
  sent["r" .. n] = token
  return wrk.format("POST", "/auth/refresh",
                    {["Content-Type"] = "application/json", ["X-Request-ID"] = "r" .. n},
                    '{"refresh_token":"' .. token .. '"}')
end
function response(status, headers, body)
  local id = headers["x-request-id"] or headers["X-Request-ID"]
  local token = sent[id]
  sent[id] = nil
  if status == 200 then
    token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  end
  if (status == 200 or status == 503) and token then
    tail = tail + 1
    queue[tail] = token
  end
end
