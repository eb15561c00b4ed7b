-- start_jobs(keys=[held, alive, started, worker_executions, job_1, execution_1, executions_1, job_2, ...],
--            args=[token, worker_name, started_at, now_ts, ttl_s, started_score, executions_score,
--                  attempts_field, error_field, job_id_1, execution_id_1, job_id_2, ...])
-- A worker starts jobs it holds, writing what rq's own start writes for each (rq 3's
-- Execution.create, Job.prepare_for_execution and Job.heartbeat): the execution HASH
-- (expires after ttl_s), the job's execution registry, the node queue's started registry
-- (member "job_id:execution_id", score started_score), the worker's execution index, and the
-- job HASH's status, started_at, worker_name and last_heartbeat; plus gpufleet's attempt count
-- (attempts_field + 1), the end of an earlier attempt's error (error_field) and no expiry.
-- Taking the id out of `held` is the proof that the job is still this worker's: a job that
-- recovery handed back meanwhile (this process was stopped past its TTL, or Redis lost the
-- take in a failover) is not started, and nothing is unless `alive` holds `token`. Returns
-- {owner, flag_1, flag_2, ...}: owner 1; or 0 when another process holds the node (taken
-- over), -1 when the key has expired (the node looks dead: wait for the heartbeat), both
-- with nothing started; per job 1 (started), 0 (no longer held) or -1 (its HASH is gone:
-- dropped from held, nothing can run it).
local token, worker, started_at, now_ts, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local started_score, executions_score, attempts_field, error_field = ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local n = (#ARGV - 9) / 2
local holder = redis.call("GET", KEYS[2])
if holder ~= token then
    local flags = {-1}
    if holder then
        flags[1] = 0
    end
    for i = 1, n do
        flags[i + 1] = 0
    end
    return flags
end
local flags = {1}
for i = 1, n do
    local job_id, execution_id = ARGV[8 + 2 * i], ARGV[9 + 2 * i]
    local job, execution, executions = KEYS[3 * i + 2], KEYS[3 * i + 3], KEYS[3 * i + 4]
    if redis.call("LREM", KEYS[1], 1, job_id) == 0 then
        flags[i + 1] = 0
    elseif redis.call("EXISTS", job) == 0 then
        flags[i + 1] = -1
    else
        local member = job_id .. ":" .. execution_id
        redis.call("HSET", execution, "id", execution_id, "job_id", job_id, "created_at", now_ts,
                   "last_heartbeat", now_ts, "worker_name", worker)
        redis.call("EXPIRE", execution, ttl)
        redis.call("ZADD", executions, executions_score, execution_id)
        redis.call("EXPIRE", executions, ttl + 60)
        redis.call("ZADD", KEYS[3], started_score, member)
        redis.call("SADD", KEYS[4], member)
        redis.call("EXPIRE", KEYS[4], ttl + 60)
        redis.call("HSET", job, "last_heartbeat", started_at, "status", "started", "started_at", started_at,
                   "worker_name", worker)
        redis.call("HINCRBY", job, attempts_field, 1)
        redis.call("HDEL", job, error_field)
        redis.call("PERSIST", job)
        flags[i + 1] = 1
    end
end
return flags
