-- wrk script: reads. MODE=list fetches the first page of 100; MODE=mixed sends 60% GET one
-- customer, 20% list (first page of 100) and 20% upserts, all on customer_ids that exist.
-- Reads API_KEY, POOL and MODE from the environment.
local key = os.getenv("API_KEY") or "bench-key"
local pool = tonumber(os.getenv("POOL") or "10000")
local mode = os.getenv("MODE") or "mixed"

math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

wrk.headers["Authorization"] = "Bearer " .. key

local function upsert(n)
  local body = string.format(
    '{"customer":{"customer_id":"cus-%d","name":"Customer %d","city":"Springfield",' ..
    '"country":"FR","email":"c%d@example.test","zipcode":"%05d"}}', n, n, n, n % 100000)
  local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. key}
  return wrk.format("POST", "/api/v1/customers", headers, body)
end

request = function()
  local n = math.random(pool) - 1
  local roll = math.random(100)
  if mode == "list" or (mode == "mixed" and roll <= 20) then
    return wrk.format("GET", "/api/v1/customers?per_page=100")
  elseif mode == "mixed" and roll <= 40 then
    return upsert(n)
  end
  return wrk.format("GET", "/api/v1/customers/cus-" .. n)
end

done = dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
