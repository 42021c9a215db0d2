-- One unique consumer per request: the thread's id and a counter make the username.
local counter = 0
local threads_made = 0

function setup(thread)
  threads_made = threads_made + 1
  -- A global in the thread's own Lua state (a local here would shadow it).
  thread:set("thread_id", threads_made)
end

function request()
  counter = counter + 1
  local body = string.format('{"username":"bench-%d-%d"}', thread_id, counter)
  return wrk.format("POST", "/consumers", {["Content-Type"] = "application/json"}, body)
end

function done(summary, latency, requests)
  local errors = summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("non-2xx or socket errors: %d\n", errors))
end
