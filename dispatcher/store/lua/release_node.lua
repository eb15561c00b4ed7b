-- release_node(keys=[alive, drain], args=[token, stop_mark])
-- A worker process leaving its node: drop the liveness key, so routing stops at once and the
-- dispatcher hands back what is left, and the drain flag it set while stopping (stop_mark),
-- each only if it is still this incarnation's: a process that was taken over leaves its
-- successor's keys alone. Returns the number of keys deleted.
local deleted = 0
if redis.call("GET", KEYS[1]) == ARGV[1] then
    deleted = deleted + redis.call("DEL", KEYS[1])
end
if redis.call("GET", KEYS[2]) == ARGV[2] then
    deleted = deleted + redis.call("DEL", KEYS[2])
end
return deleted
