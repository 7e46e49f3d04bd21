-- The live fields of a namespace's hash (see Shared::all), deleting the expired ones.
-- KEYS[1]: the namespace's hash. Returns a flat list: id, stored JSON, id, stored JSON, ...
-- A field whose expiry cannot be read was not written by put.lua and is deleted too.
if redis.replicate_commands then
    redis.replicate_commands()
end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 1, #fields, 2 do
    local expires_at = tonumber(string.match(fields[i + 1], '^{"expires_at_ms":(%d+),'))
    if expires_at and expires_at > now_ms then
        live[#live + 1] = fields[i]
        live[#live + 1] = fields[i + 1]
    else
        redis.call('HDEL', KEYS[1], fields[i])
    end
end
return live
