-- start_jobs(keys=[held, alive, started, worker_executions, worker, events, job_1, job_2, ...],
--            args=[token, <stamp: 11 values>, job_id_1, execution_id_1, job_id_2, ...])
-- A worker starts jobs it holds (start_job below: what rq's own start writes). Taking the id
-- out of `held` is the proof that the job is still this worker's: a job that recovery handed
-- back meanwhile (this process was stopped past its TTL, or Redis lost the take in a failover)
-- is not started, and nothing is unless `alive` holds `token`. Returns {owner, flag_1, flag_2,
-- ...}: owner 1; or 0 when another process holds the node (taken over), -1 when the key has
-- expired (the node looks dead: wait for the heartbeat), both with nothing started; per job 1
-- (started), 0 (no longer held) or -1 (its HASH is gone: dropped from held, nothing can run it).
--@include _events
--@include _start_job
local n = (#ARGV - 12) / 2
local holder = redis.call("GET", KEYS[2])
if holder ~= ARGV[1] then
    local flags = {-1}
    if holder then
        flags[1] = 0
    end
    for i = 1, n do
        flags[i + 1] = 0
    end
    return flags
end
local stamp = start_stamp(2, KEYS[3], KEYS[4], KEYS[5], KEYS[6])
local flags = {1}
for i = 1, n do
    local job_id, execution_id, job = ARGV[11 + 2 * i], ARGV[12 + 2 * i], KEYS[6 + i]
    if redis.call("LREM", KEYS[1], 1, job_id) == 0 then
        flags[i + 1] = 0
    elseif redis.call("EXISTS", job) == 0 then
        flags[i + 1] = -1
    else
        local timeout, batch = unpack(redis.call("HMGET", job, "timeout", stamp.batch_field))
        start_job(job_id, execution_id, job, timeout, batch, stamp)
        flags[i + 1] = 1
    end
end
return flags
