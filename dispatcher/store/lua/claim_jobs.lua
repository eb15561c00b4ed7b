-- claim_jobs(keys=[queue, held, alive], args=[token, job_id_1, job_id_2, ...])
-- A worker taking more jobs for a batch: move each job from its node queue (a LIST) to the
-- worker's held list, where the job it took first already is, so a worker that dies before
-- starting them leaves them where recovery looks. A job no longer in the queue (handed back,
-- taken by another slot) is skipped, and nothing is claimed once `alive` no longer holds
-- `token`. Returns 1 (claimed) or 0 per job.
local claimed = {}
local owner = redis.call("GET", KEYS[3]) == ARGV[1]
for i = 2, #ARGV do
    local removed = 0
    if owner then
        removed = redis.call("LREM", KEYS[1], 1, ARGV[i])
        if removed == 1 then
            redis.call("RPUSH", KEYS[2], ARGV[i])
        end
    end
    claimed[i - 1] = removed
end
return claimed
