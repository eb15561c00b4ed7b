-- claim_jobs(keys=[queue, intermediate], args=[job_id_1, job_id_2, ...])
-- A worker taking more jobs for a batch: move each job from its node queue (a LIST) to rq's
-- intermediate list, where rq's own dequeue puts the job it pops, so a worker that dies
-- before starting them leaves them where the health check looks. A job no longer in the
-- queue (handed back, taken by another slot) is skipped. Returns 1 (claimed) or 0 per job.
local claimed = {}
for i, job_id in ipairs(ARGV) do
    local removed = redis.call("LREM", KEYS[1], 1, job_id)
    if removed == 1 then
        redis.call("RPUSH", KEYS[2], job_id)
    end
    claimed[i] = removed
end
return claimed
