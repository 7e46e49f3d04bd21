-- Shared GCRA without burst (see Shared::reserve).
-- KEYS[1]: the key's theoretical arrival time (TAT), in microseconds of the server's clock.
-- ARGV[1]: the interval between two slots, in microseconds.
-- Returns how many microseconds the caller waits for its slot (0 = now).
if redis.replicate_commands then
    -- Redis 3.2 to 4: replicate the SET, not the script (which reads the clock). A no-op from 5 on.
    redis.replicate_commands()
end
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])
local interval = tonumber(ARGV[1])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then
    tat = now
end
local next_tat = tat + interval
-- '%.0f': Lua's default number format keeps 14 digits, too few for microseconds since 1970.
-- The key lives until its TAT has passed, then is of no use: a missing key means "free now".
redis.call('SET', KEYS[1], string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
return tat - now
