-- take_job(keys=[queue, alive, wakeup, started, worker_executions, worker, events],
--          args=[job_key_prefix, token, <stamp: 11 values>, execution_id_1, execution_id_2, ...])
-- A worker takes jobs from the head of its node queue, as many as it brings execution ids,
-- and starts them in the same step (start_job: what rq's own start writes, the i-th job taken
-- with execution_id_i), each returned with its HASH (job_key_prefix .. id, rq's key) as it was
-- before the start. So a job costs no round trip of its own to start: a worker recording a
-- job takes and starts its next one in the recording transaction, an idle one after its
-- wake-up list (filled when jobs arrive) wakes it, a forwarder as many as it has requests
-- free. Jobs left behind in the queue wake the next idle worker of the node (one token in
-- `wakeup`).
-- Nothing is taken unless `alive` holds `token`: while the key has expired (the node process
-- was stopped past its TTL, or Redis was away that long) the worker waits for its heartbeat
-- to take the key back, and once another process holds it (the node was taken over) this one
-- stops. An id whose HASH is gone is popped and dropped, never started (nothing could run it).
-- Returns {{job_id, {field, value, ...}}, ...} in queue order ({job_id, {}} for a dropped id;
-- {} when there is nothing to take: the queue is empty, or the key has expired), or nil when
-- another process holds the node.
--@include _events
--@include _start_job
local holder = redis.call("GET", KEYS[2])
if holder ~= ARGV[2] then
    if holder then
        return nil
    end
    return {}
end
local stamp = start_stamp(3, KEYS[4], KEYS[5], KEYS[6], KEYS[7])
local taken = {}
for i = 1, #ARGV - 13 do
    local job_id = redis.call("LPOP", KEYS[1])
    if not job_id then
        break
    end
    local job = ARGV[1] .. job_id
    local fields = redis.call("HGETALL", job)
    if #fields > 0 then
        local timeout, batch = nil, nil
        for f = 1, #fields, 2 do
            if fields[f] == "timeout" then
                timeout = fields[f + 1]
            elseif fields[f] == stamp.batch_field then
                batch = fields[f + 1]
            end
        end
        start_job(job_id, ARGV[13 + i], job, timeout, batch, stamp)
    end
    taken[#taken + 1] = {job_id, fields}
end
if #taken > 0 and redis.call("LLEN", KEYS[1]) > 0 then
    redis.call("RPUSH", KEYS[3], 1)
    redis.call("LTRIM", KEYS[3], 0, 0)
end
return taken
