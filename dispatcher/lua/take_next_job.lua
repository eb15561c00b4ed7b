-- take_next_job(keys=[queue, intermediate], args=[job_key_prefix])
-- A worker that just recorded a job takes its next one in the same transaction: the head of
-- its node queue moves to the tail of rq's intermediate list, as rq's own dequeue (LMOVE
-- LEFT RIGHT; LPOP + RPUSH here, atomic in a script and on any Redis) does, and the job's
-- HASH (job_key_prefix .. id, rq's key) comes back with it, so the next job costs no round
-- trip of its own. Returns {job_id, {field, value, ...}}, or nil when the queue is empty.
local job_id = redis.call("LPOP", KEYS[1])
if not job_id then
    return nil
end
redis.call("RPUSH", KEYS[2], job_id)
return {job_id, redis.call("HGETALL", ARGV[1] .. job_id)}
