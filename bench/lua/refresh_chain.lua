-- Each wrk thread (one connection each) walks its own refresh-token rotation chain.
-- TOKENS_FILE holds one refresh token per line; thread i takes line i.
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("idx", counter)
end
function init(args)
  local f = io.open(os.getenv("TOKENS_FILE"), "r")
  local i = 0
  for line in f:lines() do
    i = i + 1
    if i == idx then token = line end
  end
  f:close()
end
function request()
  return wrk.format("POST", "/auth/refresh", {["Content-Type"] = "application/json"},
                    '{"refresh_token":"' .. token .. '"}')
end
function response(status, headers, body)
  local t = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if status == 200 and t then token = t end
end
