-- take_job(keys=[queue, held, alive, wakeup], args=[job_key_prefix, token, count])
-- A worker takes up to `count` jobs from the head of its node queue: each id moves to the tail
-- of the worker's held list (what it took and has not started; recovery looks there when the
-- worker dies) and its HASH (job_key_prefix .. id, rq's key) comes back with it. A worker
-- recording a job runs this in the same transaction, so a busy worker's next job costs no
-- round trip of its own; an idle one runs it after its wake-up list (filled when jobs arrive)
-- wakes it; a forwarder takes as many as it has requests free. Jobs left behind in the queue
-- wake the next idle worker of the node (one token in `wakeup`).
-- Nothing is taken unless `alive` holds `token`: while the key has expired (the node process
-- was stopped past its TTL, or Redis was away that long) the worker waits for its heartbeat
-- to take the key back, and once another process holds it (the node was taken over) this one
-- stops. An id whose HASH is gone is popped and dropped, never held (nothing could run it).
-- Returns {{job_id, {field, value, ...}}, ...} in queue order ({job_id, {}} for a dropped id;
-- {} when there is nothing to take: the queue is empty, or the key has expired), or nil when
-- another process holds the node.
local holder = redis.call("GET", KEYS[3])
if holder ~= ARGV[2] then
    if holder then
        return nil
    end
    return {}
end
local taken = {}
for _ = 1, tonumber(ARGV[3]) do
    local job_id = redis.call("LPOP", KEYS[1])
    if not job_id then
        break
    end
    local fields = redis.call("HGETALL", ARGV[1] .. job_id)
    if #fields > 0 then
        redis.call("RPUSH", KEYS[2], job_id)
    end
    taken[#taken + 1] = {job_id, fields}
end
if #taken > 0 and redis.call("LLEN", KEYS[1]) > 0 then
    redis.call("RPUSH", KEYS[4], 1)
    redis.call("LTRIM", KEYS[4], 0, 0)
end
return taken
