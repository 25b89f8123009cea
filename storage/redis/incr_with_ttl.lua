-- Atomically add to a counter and give it a lifetime when it is new (or has none).
-- KEYS[1]: the counter; ARGV[1]: amount (integer); ARGV[2]: time to live in seconds.
-- Returns the new value. One round trip, and replicas can never see a counter without TTL.
local value = redis.call('INCRBY', KEYS[1], ARGV[1])
if redis.call('TTL', KEYS[1]) < 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return value
