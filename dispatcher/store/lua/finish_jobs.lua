-- finish_jobs(keys=[started, ended, worker, worker_executions, finished, dispatch_wakeup, flight, events],
--             args=[node_id, job_key_prefix, results_prefix, execution_prefix, executions_prefix,
--                   finished_field, flight_field, events_max, then per job: job_id, execution_id, ended_at, ttl,
--                   finished_score, working_s, batch_info, batch_ended, batch_id, n_fields, field_1, value_1, ...])
-- A worker records the successes of one run in one step: for each job, only while its
-- execution is still current (its member "job_id:execution_id" in the node queue's started
-- registry: nobody handed the job back meanwhile), what rq's own success path leaves behind
-- (Job._handle_success, Result.save, the finished registry, the worker's counters, rq 3's
-- Execution.delete): the job HASH's status and ended_at, its Result (the fields rq's
-- Result.serialize made, XADD with MAXLEN ~ 10, the stream and the job expiring after `ttl`:
-- "" none, -1 never), the finished registry (`finished_score`, "" when rq would not add it),
-- successful_job_count and total_working_time, gpufleet's batch counter (`finished_field`)
-- and ended list; the job leaves its tenant's jobs in flight (_flight); its job_finished event,
-- and its batch's batch_ended when it was the batch's last job (_batch_ended).
-- Late or not, the execution is cleaned up as rq's cleanup_execution does (its HASH, its
-- registry entries, the worker's index). The runs that ended are counted for the dispatcher
-- (the `ended` HASH, keys.dispatch_ended), which is woken, and the worker is idle again.
-- What apply_fenced does for rq's own writes, without shipping them command by command: this
-- is the path every job that succeeds takes. Returns 1 (recorded) or 0 (late) per job.
--@include _flight
--@include _events
--@include _batch_ended
local started, ended_counts, worker, worker_executions, finished, wakeup, flight, events = unpack(KEYS)
local node_id, job_prefix, results_prefix, execution_prefix, executions_prefix, finished_field, flight_field,
    events_max = unpack(ARGV, 1, 8)
local flags = {}
local ended = 0
local i = 9
while i <= #ARGV do
    local job_id, execution_id, ended_at, ttl, finished_score, working_s, batch_info, batch_ended, batch_id =
        unpack(ARGV, i, i + 8)
    local n_fields = tonumber(ARGV[i + 9])
    local fields_at = i + 10
    i = fields_at + 2 * n_fields
    local member = job_id .. ":" .. execution_id
    local current = redis.call("ZSCORE", started, member) ~= false
    if current then
        local job, results = job_prefix .. job_id, results_prefix .. job_id
        redis.call("HSET", job, "status", "finished", "ended_at", ended_at)
        redis.call("XADD", results, "MAXLEN", "~", "10", "*", unpack(ARGV, fields_at, i - 1))
        if ttl == "-1" then
            redis.call("PERSIST", results)
        elseif ttl ~= "" then
            redis.call("EXPIRE", results, ttl)
        end
        if finished_score ~= "" then
            redis.call("ZADD", finished, finished_score, job_id)
        end
        if ttl ~= "" and tonumber(ttl) > 0 then
            redis.call("EXPIRE", job, ttl)
        end
        leave_flight(flight, job, flight_field)
        redis.call("HINCRBY", worker, "successful_job_count", 1)
        redis.call("HINCRBYFLOAT", worker, "total_working_time", working_s)
        event(events, events_max, "event", "job_finished", "batch", batch_id, "job", job_id, "node", node_id)
        if batch_info ~= "" then
            redis.call("HINCRBY", batch_info, finished_field, 1)
            redis.call("RPUSH", batch_ended, job_id)
            counted(events, events_max, batch_info, batch_id)
        end
        ended = ended + 1
    end
    redis.call("DEL", execution_prefix .. member)
    redis.call("ZREM", started, member)
    redis.call("ZREM", executions_prefix .. job_id, execution_id)
    redis.call("SREM", worker_executions, member)
    flags[#flags + 1] = current and 1 or 0
end
if ended > 0 then
    redis.call("HINCRBY", ended_counts, node_id, ended)
end
redis.call("RPUSH", wakeup, 1)
redis.call("LTRIM", wakeup, 0, 0)
redis.call("HSET", worker, "state", "idle")
return flags
