-- move_to_nodes(keys=[ingress, rq_queues, node_queue_1, job_1, node_queue_2, job_2, ...],
--               args=[node_field, job_id_1, node_queue_name_1, node_id_1, job_id_2, ...])
-- Move a batch of job ids from one ingress LIST to node rq queues, in one atomic step.
-- For each job: LREM it from the ingress; if it was there, RPUSH it onto its node queue,
-- point the rq job's `origin` at that queue (so rq's registries follow it), record the node
-- in the job field named by node_field, and register the queue in rq's set of queues.
-- A job id no longer in the ingress (cancelled, or moved by another dispatcher) is skipped.
-- Returns an array with 1 (moved) or 0 (skipped) per job, in argument order.
--
-- Same effect in fewer calls: the dispatcher moves the head of the ingress in order, so the
-- jobs that are still its first elements leave with one LRANGE + LTRIM (what LREM of each, in
-- turn, would remove), and only the rest are looked for one by one; each node queue gets one
-- RPUSH of its jobs in argument order, and one SADD registers every queue of the batch.
local node_field = ARGV[1]
local n = (#ARGV - 1) / 3
local head = redis.call("LRANGE", KEYS[1], 0, n - 1)
local at_head = 0
while at_head < n and head[at_head + 1] == ARGV[3 * at_head + 2] do
    at_head = at_head + 1
end
if at_head > 0 then
    redis.call("LTRIM", KEYS[1], at_head, -1)
end
local moved, pushes, order = {}, {}, {}
for i = 1, n do
    local job_id, queue_name, node_id = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
    if i <= at_head or redis.call("LREM", KEYS[1], 1, job_id) == 1 then
        local node_queue = KEYS[2 * i + 1]
        local ids = pushes[node_queue]
        if ids == nil then
            ids = {}
            pushes[node_queue] = ids
            order[#order + 1] = node_queue
        end
        ids[#ids + 1] = job_id
        redis.call("HSET", KEYS[2 * i + 2], "origin", queue_name, node_field, node_id)
        moved[i] = 1
    else
        moved[i] = 0
    end
end
for _, node_queue in ipairs(order) do
    local ids = pushes[node_queue]
    for first = 1, #ids, 1000 do  -- unpack() is bounded by Lua's C stack
        redis.call("RPUSH", node_queue, unpack(ids, first, math.min(first + 999, #ids)))
    end
end
for first = 1, #order, 1000 do
    redis.call("SADD", KEYS[2], unpack(order, first, math.min(first + 999, #order)))
end
return moved
