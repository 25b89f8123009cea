-- Token bucket: refill, then take one token if there is one. Atomic, one round trip.
-- KEYS[1]: the bucket (hash: t = tokens, ts = time of the last refill, seconds).
-- ARGV[1]: now (seconds, the caller's clock); ARGV[2]: refill rate (tokens per second);
-- ARGV[3]: capacity (burst); ARGV[4]: idle lifetime in milliseconds.
-- Returns {allowed (1/0), tokens left as a string}: a number reply would be truncated to an
-- integer, and the caller needs the fraction for Retry-After.
local now = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens, ts = burst, now  -- new or expired bucket: full
end
-- Replicas' clocks differ a little: time never runs backwards here, so a lagging replica
-- neither refills nor rewinds the bucket.
if now > ts then
  tokens = tokens + (now - ts) * rate
  ts = now
end
if tokens > burst then
  tokens = burst  -- also clamps a bucket whose burst was lowered by a reload
end
local allowed = 0
-- The epsilon absorbs float error: (now + 1/rate - now) * rate can land just under 1.
if tokens >= 1 - 1e-9 then
  tokens = math.max(tokens - 1, 0)
  allowed = 1
end
-- %.17g round-trips a double; Redis's default number formatting keeps only 14 digits.
redis.call('HSET', KEYS[1], 't', string.format('%.17g', tokens), 'ts', string.format('%.17g', ts))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {allowed, string.format('%.17g', tokens)}
