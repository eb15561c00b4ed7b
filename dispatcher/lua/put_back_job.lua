-- put_back_job(keys=[queue, intermediate], args=[job_id])
-- Undo take_next_job for a job never started (its worker is stopping): it leaves rq's
-- intermediate list for the head of its node queue, where it was. A job no longer in the
-- intermediate list (the health check handed it back already) is left alone. Returns 1 or 0.
if redis.call("LREM", KEYS[2], 1, ARGV[1]) == 1 then
    redis.call("LPUSH", KEYS[1], ARGV[1])
    return 1
end
return 0
