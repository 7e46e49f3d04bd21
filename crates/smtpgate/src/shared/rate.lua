-- A shared rate (see Shared::take): gcra.lua's GCRA on the server's clock.
-- KEYS[1]: the key's TAT. ARGV: the interval and tolerance in microseconds, 'reserve' or 'admit'.
if redis.replicate_commands then
    -- Redis 3.2 to 4: replicate the SET, not the script (which reads the clock). A no-op from 5 on.
    redis.replicate_commands()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
return gcra(KEYS[1], now, ARGV)
