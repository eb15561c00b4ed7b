-- move_to_nodes(keys=[ingress, rq_queues, node_queue_1, job_1, node_queue_2, job_2, ...],
--               args=[node_field, job_id_1, node_queue_name_1, node_id_1, job_id_2, ...])
-- Move a batch of job ids from one ingress LIST to node rq queues, in one atomic step.
-- For each job: LREM it from the ingress; if it was there, RPUSH it onto its node queue,
-- point the rq job's `origin` at that queue (so rq's registries follow it), record the node
-- in the job field named by node_field, and register the queue in rq's set of queues.
-- A job id no longer in the ingress (cancelled, or moved by another dispatcher) is skipped.
-- Returns an array with 1 (moved) or 0 (skipped) per job, in argument order.
local node_field = ARGV[1]
local moved = {}
for i = 1, (#ARGV - 1) / 3 do
    local job_id, queue_name, node_id = ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1]
    local node_queue, job = KEYS[2 * i + 1], KEYS[2 * i + 2]
    if redis.call("LREM", KEYS[1], 1, job_id) == 1 then
        redis.call("RPUSH", node_queue, job_id)
        redis.call("HSET", job, "origin", queue_name, node_field, node_id)
        redis.call("SADD", KEYS[2], node_queue)
        moved[i] = 1
    else
        moved[i] = 0
    end
end
return moved
