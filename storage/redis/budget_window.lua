-- Rolling-window spend: each key is a hash of sub-buckets (field = bucket index, value =
-- integer micro-dollars). Adds ARGV[2] to the current bucket of every key, drops buckets
-- that left the window, and returns each window's sum. With amount 0 it only reads (and
-- prunes), so one script serves both recording and checking, for all keys at once.
-- KEYS[i]: one (scope, id, window) hash; all keys of a call share a hash tag (one slot).
-- ARGV[1]: now (seconds); ARGV[2]: amount (integer micro-dollars, >= 0);
-- ARGV[3]: buckets per window (n); then per key i: ARGV[2 + 2i] = bucket length in seconds,
-- ARGV[3 + 2i] = hard limit in micro-dollars (0 = none).
-- Returns {sum_1, free_at_1, sum_2, free_at_2, ...}: free_at is the index of the bucket whose
-- roll-out brings the sum back under the limit (-1 when under it); the key is free again at
-- (free_at + n) * bucket length.
local now = tonumber(ARGV[1])
local amount = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local out = {}
for i, key in ipairs(KEYS) do
  local size = tonumber(ARGV[2 + 2 * i])
  local limit = tonumber(ARGV[3 + 2 * i])
  local current = math.floor(now / size)
  local oldest = current - n + 1
  local fields = redis.call('HGETALL', key)
  local stale = {}
  local live = {}
  local sum = 0
  for j = 1, #fields, 2 do
    local index = tonumber(fields[j])
    if index < oldest then
      stale[#stale + 1] = fields[j]
    else
      local value = tonumber(fields[j + 1])
      live[#live + 1] = {index, value}
      sum = sum + value
    end
  end
  if #stale > 0 then
    redis.call('HDEL', key, unpack(stale))
  end
  if amount > 0 then
    local added = false
    for _, bucket in ipairs(live) do
      if bucket[1] == current then
        bucket[2] = bucket[2] + amount
        added = true
      end
    end
    if not added then
      live[#live + 1] = {current, amount}
    end
    redis.call('HINCRBY', key, current, amount)
    sum = sum + amount
    -- Every bucket has left the window once the current one has: keep the hash until then.
    redis.call('EXPIRE', key, math.max(1, math.ceil((current + n) * size - now)))
  end
  local free_at = -1
  if limit > 0 and sum >= limit then
    -- Oldest buckets roll out first; find the first roll-out that brings the sum under.
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local left = sum
    for _, bucket in ipairs(live) do
      left = left - bucket[2]
      if left < limit then
        free_at = bucket[1]
        break
      end
    end
  end
  out[#out + 1] = sum
  out[#out + 1] = free_at
end
return out
