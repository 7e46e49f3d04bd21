-- The GCRA of crate::rate (Gcra::decide) on one key of the store, with the same arithmetic, in
-- whole microseconds. Scripts that use it append their call (rate.lua; the shared tests, which
-- give `now` themselves to compare with the local limiter).
-- key: the key holding the theoretical arrival time (TAT); now: the time in microseconds;
-- args: the interval and the tolerance in microseconds, then 'reserve' (count the event at the
-- first instant it is on time: Mode::Reserve) or 'admit' (refuse it if early: Mode::Admit).
-- Returns {0, 0}: allowed now; {1, wait}: its slot comes in `wait` microseconds;
-- {2, wait}: refused, not counted, on time in `wait` microseconds.
local function gcra(key, now, args)
    local interval = tonumber(args[1])
    local tolerance = tonumber(args[2])
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then
        tat = now
    end
    local early = tat - (now + tolerance)
    if early > 0 and args[3] ~= 'reserve' then
        return {2, early}
    end
    local next_tat = tat + interval
    -- '%.0f': Lua's default number format keeps 14 digits, too few for microseconds since 1970.
    -- The key lives until its TAT has passed, then is of no use: a missing key means "free now".
    redis.call('SET', key, string.format('%.0f', next_tat), 'PX', math.floor((next_tat - now) / 1000) + 1)
    if early > 0 then
        return {1, early}
    end
    return {0, 0}
end
