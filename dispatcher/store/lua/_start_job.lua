-- A library, not a script (its name starts with "_"): scripts.py puts it in front of each
-- script that names it in a line "--@include _start_job".
-- start_job(job_id, execution_id, job, timeout, batch, s): start one job as rq's own start does (rq
-- 3's Execution.create, Job.prepare_for_execution, Job.heartbeat and Worker.get_heartbeat_ttl):
-- the execution HASH (expires after the heartbeat TTL), the job's execution registry, the node
-- queue's started registry (member "job_id:execution_id"), the worker's execution index, and
-- the job HASH's status, started_at, worker_name and last_heartbeat, the worker's state (busy,
-- rq's Worker.set_state); plus gpufleet's attempt
-- count (+ 1), the end of an earlier attempt's error, no expiry, and the job_started event
-- (_events, which the script includes first). `timeout` and `batch` are the job's `timeout`
-- and batch fields (the TTL is min(timeout, monitoring interval) + 60 s, as rq's). `s`: the
-- start's stamp, from start_stamp below: worker, started_at (rq's utcformat), now (unix
-- time), monitoring interval (s), attempts and error fields, execution and executions key
-- prefixes, the node id, the event stream's max_len and the batch field, and the keys of the
-- started registry, the worker's execution index, the worker and the event stream.
local function start_job(job_id, execution_id, job, timeout, batch, s)
    local t = tonumber(timeout)
    local ttl = s.monitoring + 60
    if t and t > 0 then
        ttl = math.floor(math.min(t, s.monitoring)) + 60
    end
    local now = math.floor(s.now)
    local member = job_id .. ":" .. execution_id
    local execution, executions = s.execution_prefix .. member, s.executions_prefix .. job_id
    redis.call("HSET", execution, "id", execution_id, "job_id", job_id, "created_at", s.now_ts,
               "last_heartbeat", s.now_ts, "worker_name", s.worker)
    redis.call("EXPIRE", execution, ttl)
    redis.call("ZADD", executions, now + ttl + 60, execution_id)
    redis.call("EXPIRE", executions, ttl + 60)
    redis.call("ZADD", s.started, now + ttl, member)
    redis.call("SADD", s.worker_executions, member)
    redis.call("EXPIRE", s.worker_executions, ttl + 60)
    redis.call("HSET", job, "last_heartbeat", s.started_at, "status", "started", "started_at", s.started_at,
               "worker_name", s.worker)
    local attempt = redis.call("HINCRBY", job, s.attempts_field, 1)
    redis.call("HDEL", job, s.error_field)
    redis.call("PERSIST", job)
    redis.call("HSET", s.worker_key, "state", "busy")
    event(s.events, s.events_max, "event", "job_started", "batch", batch or "", "job", job_id, "node", s.node,
        "attempt", attempt)
end

-- The stamp in ARGV[i .. i + 10] (what Scripts' StartStamp.args writes), with the keys of the
-- started registry, the worker's execution index, the worker and the event stream
-- (StartStamp.keys).
local function start_stamp(i, started, worker_executions, worker_key, events)
    return {worker = ARGV[i], started_at = ARGV[i + 1], now_ts = ARGV[i + 2], now = tonumber(ARGV[i + 2]),
            monitoring = tonumber(ARGV[i + 3]), attempts_field = ARGV[i + 4], error_field = ARGV[i + 5],
            execution_prefix = ARGV[i + 6], executions_prefix = ARGV[i + 7], node = ARGV[i + 8],
            events_max = ARGV[i + 9], batch_field = ARGV[i + 10],
            started = started, worker_executions = worker_executions, worker_key = worker_key, events = events}
end
