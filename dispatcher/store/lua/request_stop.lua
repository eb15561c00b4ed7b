-- request_stop(keys=[started, requests, wakeup], args=[ttl_s, member_1, member_2, ...])
-- Ask a node to stop runs of its jobs (`gpufleet cancel --running`): each member
-- ("job_id:execution_id") still in the node queue's started registry joins the node's stop
-- requests (keys.stop_requests, a SET expiring ttl_s after the last request), and the node's
-- stopper is woken (keys.stop_wakeup, one token at most). A member no longer there is left
-- out: that run ended, or was handed back, between the caller's read and this call. The check
-- and the request are one step, so a request never names a run that is over. Returns 1
-- (asked) or 0 (not running there) per member.
local flags = {}
local asked = 0
for i = 2, #ARGV do
    if redis.call("ZSCORE", KEYS[1], ARGV[i]) then
        redis.call("SADD", KEYS[2], ARGV[i])
        asked = asked + 1
        flags[i - 1] = 1
    else
        flags[i - 1] = 0
    end
end
if asked > 0 then
    redis.call("EXPIRE", KEYS[2], ARGV[1])
    redis.call("RPUSH", KEYS[3], 1)
    redis.call("LTRIM", KEYS[3], 0, 0)
end
return flags
