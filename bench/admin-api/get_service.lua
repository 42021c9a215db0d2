-- GET /services/{name} for a random one of the 1,000 loaded services.
math.randomseed(os.time())
function request()
  return wrk.format("GET", string.format("/services/svc-%d", math.random(0, 999)))
end
