-- wrk script for GET /v1/quota (serve.sh, soak.sh): each request carries the next tenant's key;
-- the keys file (one key per line) is the script's argument. Prints one line:
-- RESULT <req/s> <p50 ms> <p90 ms> <p99 ms> <requests> <non-2xx> <socket errors>
local keys, i = {}, 0
init = function(args)
  for line in io.lines(args[1]) do keys[#keys + 1] = line end
end
request = function()
  i = i % #keys + 1
  return wrk.format("GET", "/v1/quota", { ["Authorization"] = "Bearer " .. keys[i] })
end
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %.3f %.3f %.3f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000, summary.requests,
    summary.errors.status, summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
