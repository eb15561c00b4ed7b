-- move_to_nodes(keys=[ingress, rq_queues, node_queue_1 .. node_queue_k, wakeup_1 .. wakeup_k],
--               args=[node_field, job_key_prefix, node_of_each_job, queue_name_1, node_id_1 ..
--                     queue_name_k, node_id_k, job_id_1 .. job_id_n])
-- Move a batch of job ids from one ingress LIST to node rq queues, in one atomic step.
-- Each of the k node queues is named once; node_of_each_job holds two bytes per job, the
-- big-endian index (1..k) of its node, so a job costs one argument (its id) and its HASH is
-- job_key_prefix .. id (rq's key). For each job: LREM it from the ingress; if it was there,
-- RPUSH it onto its node queue, point the rq job's `origin` at that queue (so rq's registries
-- follow it), record the node in the job field named by node_field, and register the queue in
-- rq's set of queues; each node that got jobs gets one token in its wake-up list (an idle
-- worker of it waits on that list, then takes). A job id no longer in the ingress (cancelled, or moved by another
-- dispatcher) is skipped; an id whose HASH is gone (nothing could ever run it) leaves the
-- ingress and goes nowhere, so no stray HASH is created for it. Returns an array with 1
-- (moved), 0 (skipped) or -1 (dropped: no job data) per job, in order.
--
-- Same effect in fewer calls: the dispatcher moves the head of the ingress in order, so the
-- jobs that are still its first elements leave with one LRANGE + LTRIM (what LREM of each, in
-- turn, would remove), and only the rest are looked for one by one; each node queue gets one
-- RPUSH of its jobs in argument order, and one SADD registers every queue that got a job.
local node_field, job_key_prefix, node_of_job = ARGV[1], ARGV[2], ARGV[3]
local k = (#KEYS - 2) / 2
local first_job = 4 + 2 * k  -- ARGV index of job_id_1
local n = #ARGV - first_job + 1
local head = redis.call("LRANGE", KEYS[1], 0, n - 1)
local at_head = 0
while at_head < n and head[at_head + 1] == ARGV[first_job + at_head] do
    at_head = at_head + 1
end
if at_head > 0 then
    redis.call("LTRIM", KEYS[1], at_head, -1)
end
local moved, pushes = {}, {}
for i = 1, n do
    local job_id = ARGV[first_job + i - 1]
    if (i > at_head and redis.call("LREM", KEYS[1], 1, job_id) == 0) then
        moved[i] = 0
    else
        local high, low = string.byte(node_of_job, 2 * i - 1, 2 * i)
        local node = high * 256 + low
        local job = job_key_prefix .. job_id
        -- HSET adds both fields only to a HASH without `origin` (rq writes it for every job):
        -- then, if they are all it holds, HSET has just made it, and there was no job
        if redis.call("HSET", job, "origin", ARGV[2 + 2 * node], node_field, ARGV[3 + 2 * node]) == 2
                and redis.call("HLEN", job) == 2 then
            redis.call("DEL", job)
            moved[i] = -1
        else
            local ids = pushes[node]
            if ids == nil then
                ids = {}
                pushes[node] = ids
            end
            ids[#ids + 1] = job_id
            moved[i] = 1
        end
    end
end
local used = {}
for node = 1, k do
    local ids = pushes[node]
    if ids ~= nil then
        used[#used + 1] = KEYS[2 + node]
        for first = 1, #ids, 1000 do  -- unpack() is bounded by Lua's C stack
            redis.call("RPUSH", KEYS[2 + node], unpack(ids, first, math.min(first + 999, #ids)))
        end
        redis.call("RPUSH", KEYS[2 + k + node], 1)
        redis.call("LTRIM", KEYS[2 + k + node], 0, 0)
    end
end
for first = 1, #used, 1000 do
    redis.call("SADD", KEYS[2], unpack(used, first, math.min(first + 999, #used)))
end
return moved
