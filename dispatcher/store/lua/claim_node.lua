-- claim_node(keys=[alive], args=[token, ttl_ms, expected])
-- A worker process starting under a node id claims it: the node's liveness key takes this
-- process's incarnation token with the heartbeat TTL. With expected = "" the key must be
-- absent (no live holder); with expected = an earlier incarnation's token (one known to be
-- dead), it must still hold that token, which is replaced. Returns {1} when claimed, else
-- {0, token of the current holder} ({0, false} if the expected holder is already gone).
local current = redis.call("GET", KEYS[1])
if (ARGV[3] == "" and not current) or (ARGV[3] ~= "" and current == ARGV[3]) then
    redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
    return {1}
end
return {0, current}
