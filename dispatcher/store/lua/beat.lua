-- beat(keys=[alive, heartbeat, nodes], args=[token, ttl_ms, node_id, field_1, value_1, ...])
-- One heartbeat of the process holding a node: refresh the liveness key (value = its
-- incarnation token, TTL ttl_ms), rewrite the heartbeat HASH and register the node. Only
-- while the key holds `token` or has expired (a process that was stopped past its TTL and
-- resumed takes it back); a key holding another token means another process has taken the
-- node over since: nothing is written and 0 is returned, so this process stops. Returns 1
-- when written.
local current = redis.call("GET", KEYS[1])
if current and current ~= ARGV[1] then
    return 0
end
redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
redis.call("HSET", KEYS[2], unpack(ARGV, 4))
redis.call("SADD", KEYS[3], ARGV[3])
return 1
