-- put_back_job(keys=[queue, held, wakeup], args=[job_id])
-- Undo a take for a job never started (its worker is stopping, or found it was taken over):
-- it leaves the worker's held list for the head of its node queue, where it was, and wakes an
-- idle worker of the node. A job no longer held (recovery handed it back already) is left
-- alone. Returns 1 or 0.
if redis.call("LREM", KEYS[2], 1, ARGV[1]) == 1 then
    redis.call("LPUSH", KEYS[1], ARGV[1])
    redis.call("RPUSH", KEYS[3], 1)
    redis.call("LTRIM", KEYS[3], 0, 0)
    return 1
end
return 0
