-- release_lease(keys=[lease], args=[token])
-- Drop the lease if `token` holds it, so a standby takes over at once. Returns 1 or 0.
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("DEL", KEYS[1])
end
return 0
