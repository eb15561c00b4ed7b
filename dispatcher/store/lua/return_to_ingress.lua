-- return_to_ingress(keys=[ingress, rq_queues, source_1, job_1, batch_1, source_2, ...],
--                   args=[ingress_name, at_front, node_field, job_id_1, member_1, counter_1, ...])
-- Put jobs back in an ingress queue, each only if it is still in its source: a LIST (a node
-- queue, rq's intermediate list) holding job_id, or a ZSET (rq's started registry, a failed
-- registry, a retry schedule) holding member. Jobs are given in the order they should end up
-- in: at_front = "1" puts them, in that order, before the jobs already waiting; else after.
-- Each returned job is re-homed to the ingress (origin, status queued, node_field cleared, no
-- expiry: a failed job's HASH had one);
-- when counter_i is not empty, that field of its batch HASH is decremented (a failed job
-- coming back). A job whose HASH is gone leaves its source and goes nowhere (nothing could
-- run it; no stray HASH is made). Returns 1 (returned), 0 (no longer in its source) or -1
-- (dropped: no job data) per job, in order.
local ingress, ingress_name, at_front, node_field = KEYS[1], ARGV[1], ARGV[2] == "1", ARGV[3]
local n = (#ARGV - 3) / 3
local first, last, step = 1, n, 1
if at_front then
    first, last, step = n, 1, -1
end
local returned = {}
for i = first, last, step do
    local job_id, member, counter = ARGV[3 * i + 1], ARGV[3 * i + 2], ARGV[3 * i + 3]
    local source, job, batch = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
    local removed
    if redis.call("TYPE", source).ok == "zset" then
        removed = redis.call("ZREM", source, member)
    else
        removed = redis.call("LREM", source, 1, job_id)
    end
    if removed == 1 and redis.call("EXISTS", job) == 0 then
        removed = -1
    elseif removed == 1 then
        if at_front then
            redis.call("LPUSH", ingress, job_id)
        else
            redis.call("RPUSH", ingress, job_id)
        end
        redis.call("HSET", job, "origin", ingress_name, "status", "queued", node_field, "")
        redis.call("PERSIST", job)
        if counter ~= "" then
            redis.call("HINCRBY", batch, counter, -1)
        end
    end
    returned[i] = removed
end
redis.call("SADD", KEYS[2], ingress)
return returned
