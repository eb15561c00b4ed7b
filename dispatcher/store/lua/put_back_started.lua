-- put_back_started(keys=[queue, started, worker_executions, job, execution, executions, wakeup],
--                  args=[job_id, execution_id, attempts_field])
-- Undo a take (take_job, which starts what it takes) for a job that never ran: its
-- worker was asked to stop between the record step that took it and running it. What
-- start_job wrote is taken back (the started registry's member, the worker's index entry, the
-- execution and its registry entry, the attempt), the job is queued again at the head of its
-- node queue, where it was, and an idle worker of the node is woken. A job no longer in the
-- started registry (recovery handed it back already) is left alone. Returns 1 or 0.
local member = ARGV[1] .. ":" .. ARGV[2]
if redis.call("ZREM", KEYS[2], member) == 0 then
    return 0
end
redis.call("SREM", KEYS[3], member)
redis.call("DEL", KEYS[5])
redis.call("ZREM", KEYS[6], ARGV[2])
redis.call("HSET", KEYS[4], "status", "queued")
redis.call("HDEL", KEYS[4], "started_at", "worker_name", "last_heartbeat")
redis.call("HINCRBY", KEYS[4], ARGV[3], -1)
redis.call("LPUSH", KEYS[1], ARGV[1])
redis.call("RPUSH", KEYS[7], 1)
redis.call("LTRIM", KEYS[7], 0, 0)
return 1
