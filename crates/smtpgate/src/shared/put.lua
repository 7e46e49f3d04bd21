-- One field of a namespace's hash with its own expiry (see Shared::put).
-- KEYS[1]: the namespace's hash. ARGV[1]: the id; ARGV[2]: the value, as a JSON string literal;
-- ARGV[3]: the time to live in milliseconds (at least 1).
-- Stores {"expires_at_ms":<server time + ttl>,"value":"<the value>"} and keeps the whole hash at
-- least as long as this field, so an abandoned namespace disappears by itself.
if redis.replicate_commands then
    redis.replicate_commands()
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local ttl = tonumber(ARGV[3])
local stored = '{"expires_at_ms":' .. string.format('%.0f', now_ms + ttl) .. ',"value":' .. ARGV[2] .. '}'
redis.call('HSET', KEYS[1], ARGV[1], stored)
if redis.call('PTTL', KEYS[1]) < ttl then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 1
