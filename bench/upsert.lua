-- wrk script: upserts with realistic bodies and random customer_ids from a pool, so that
-- both inserts and updates happen. Reads API_KEY and POOL from the environment.
local key = os.getenv("API_KEY") or "bench-key"
local pool = tonumber(os.getenv("POOL") or "10000")
local countries = {"US", "FR", "DE", "GB", "JP", "BR", "IN", "CA"}

math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

request = function()
  local n = math.random(pool) - 1
  local body = string.format(
    '{"customer":{"customer_id":"cus-%d","name":"Customer %d","address_line1":"%d Main St",' ..
    '"address_line2":null,"city":"Springfield","country":"%s","email":"c%d@example.test",' ..
    '"legal_name":"Customer %d LLC","legal_number":"LN-%d","logo_url":"https://example.test/%d.png",' ..
    '"phone":"+1 555 %04d","state":"CA","url":"https://example.test/%d","zipcode":"%05d","vat_rate":20}}',
    n, n, n, countries[n % #countries + 1], n, n, n, n, n % 10000, n, n % 100000)
  return wrk.format(nil, "/api/v1/customers", nil, body)
end

done = dofile((os.getenv("BENCH_DIR") or "bench") .. "/report.lua")
