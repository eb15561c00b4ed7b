-- end_jobs(keys=[source_1, job_1, registry_1, batch_1, ended_1, source_2, ..., flight, events],
--          args=[status, counter, ttl_s, error_field, ended_at, flight_field, events_max,
--                job_id_1, member_1, reason_1, batch_id_1, ...])
-- End jobs for good (a node lost past the retry limit: "failed"; a cancel: "canceled"), each
-- only if it is still in its source: a LIST holding job_id or a ZSET holding member. Sets the
-- job's status, its reason in error_field and ended_at, files it in registry (rq's failed or
-- canceled ZSET, score = now + ttl_s), lets the job HASH expire after ttl_s, increments
-- the batch HASH field `counter` and appends the job to the batch's list of ended jobs; it
-- leaves its tenant's jobs in flight if it was in flight (_flight); its event ("job_" .. status,
-- with the reason as its error) and its batch's batch_ended when it was the batch's last job
-- (_batch_ended). A job whose HASH is gone only leaves its source (no stray
-- HASH is made). Returns 1 (ended), 0 (no longer in its source) or -1 (dropped: no job data)
-- per job.
--@include _flight
--@include _events
--@include _batch_ended
local status, counter, ttl, error_field, ended_at = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5]
local flight, flight_field, events, events_max = KEYS[#KEYS - 1], ARGV[6], KEYS[#KEYS], ARGV[7]
local now = tonumber(redis.call("TIME")[1])
local ended = {}
for i = 1, (#ARGV - 7) / 4 do
    local job_id, member, reason, batch_id = ARGV[4 * i + 4], ARGV[4 * i + 5], ARGV[4 * i + 6], ARGV[4 * i + 7]
    local source, job, registry, batch, ended_list = KEYS[5 * i - 4], KEYS[5 * i - 3], KEYS[5 * i - 2],
        KEYS[5 * i - 1], KEYS[5 * i]
    local removed
    if redis.call("TYPE", source).ok == "zset" then
        removed = redis.call("ZREM", source, member)
    else
        removed = redis.call("LREM", source, 1, job_id)
    end
    if removed == 1 and redis.call("EXISTS", job) == 0 then
        removed = -1
    elseif removed == 1 then
        redis.call("HSET", job, "status", status, error_field, reason, "ended_at", ended_at)
        redis.call("ZADD", registry, now + ttl, job_id)
        redis.call("EXPIRE", job, ttl)
        redis.call("HINCRBY", batch, counter, 1)
        redis.call("RPUSH", ended_list, job_id)
        leave_flight(flight, job, flight_field)
        event(events, events_max, "event", "job_" .. status, "batch", batch_id, "job", job_id, "error", reason)
        counted(events, events_max, batch, batch_id)
    end
    ended[i] = removed
end
return ended
