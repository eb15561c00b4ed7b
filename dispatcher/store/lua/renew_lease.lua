-- renew_lease(keys=[lease], args=[token, ttl_ms])
-- Extend the lease if `token` still holds it. Returns 1 if renewed, 0 if another holds it
-- (or nobody: an expired lease is re-taken with SET NX, not here).
if redis.call("GET", KEYS[1]) == ARGV[1] then
    return redis.call("PEXPIRE", KEYS[1], ARGV[2])
end
return 0
