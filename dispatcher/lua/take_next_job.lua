-- take_next_job(keys=[queue, intermediate], args=[job_key_prefix])
-- A worker that just recorded a job takes its next one in the same transaction: the head of
-- its node queue moves to rq's intermediate list, as rq's own dequeue (LMOVE) does, and the
-- job's HASH (job_key_prefix .. id, rq's key) comes back with it, so the next job costs no
-- round trip of its own. Returns {job_id, {field, value, ...}}, or nil when the queue is empty.
local job_id = redis.call("LMOVE", KEYS[1], KEYS[2], "LEFT", "RIGHT")
if not job_id then
    return nil
end
return {job_id, redis.call("HGETALL", ARGV[1] .. job_id)}
