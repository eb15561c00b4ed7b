-- return_to_ingress(keys=[dest, rq_queues, flight, lanes, source_1, job_1, batch_1, source_2, ...],
--                   args=[dest_name, at_front, node_field, flight_field, tenant_field, lane_batch,
--                         lane_tenant, job_id_1, member_1, counter_1, ...])
-- Put jobs back where they wait, each only if it is still in its source: a LIST (a node
-- queue, rq's intermediate list) holding job_id, or a ZSET (rq's started registry, a failed
-- registry, a retry schedule) holding member. `dest` is an ingress (lane_batch "": the job is
-- in flight again, counted for its tenant, see _flight) or the lane of batch lane_batch (a
-- rerun waits its tenant's turn again: the lane joins the lanes HASH under lane_tenant).
-- Jobs are given in the order they should end up in: at_front = "1" puts them, in that
-- order, before the jobs already waiting; else after.
-- Each returned job is re-homed to dest (origin dest_name, status queued, node_field cleared,
-- no expiry: a failed job's HASH had one);
-- when counter_i is not empty, that field of its batch HASH is decremented (a failed job
-- coming back). A job whose HASH is gone leaves its source and goes nowhere (nothing could
-- run it; no stray HASH is made). Returns 1 (returned), 0 (no longer in its source) or -1
-- (dropped: no job data) per job, in order.
--@include _flight
local dest, rq_queues, flight, lanes = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dest_name, at_front, node_field, flight_field, tenant_field, lane_batch, lane_tenant = unpack(ARGV, 1, 7)
at_front = at_front == "1"
local n = (#ARGV - 7) / 3
local first, last, step = 1, n, 1
if at_front then
    first, last, step = n, 1, -1
end
local returned = {}
local any = false
for i = first, last, step do
    local job_id, member, counter = ARGV[3 * i + 5], ARGV[3 * i + 6], ARGV[3 * i + 7]
    local source, job, batch = KEYS[3 * i + 2], KEYS[3 * i + 3], KEYS[3 * i + 4]
    local removed
    if redis.call("TYPE", source).ok == "zset" then
        removed = redis.call("ZREM", source, member)
    else
        removed = redis.call("LREM", source, 1, job_id)
    end
    if removed == 1 and redis.call("EXISTS", job) == 0 then
        removed = -1
    elseif removed == 1 then
        any = true
        if at_front then
            redis.call("LPUSH", dest, job_id)
        else
            redis.call("RPUSH", dest, job_id)
        end
        redis.call("HSET", job, "origin", dest_name, "status", "queued", node_field, "")
        redis.call("PERSIST", job)
        if lane_batch == "" then
            local tenant = redis.call("HGET", job, tenant_field)
            if tenant and enter_flight(job, flight_field, tenant) == 1 then
                redis.call("HINCRBY", flight, tenant, 1)
            end
        end
        if counter ~= "" then
            redis.call("HINCRBY", batch, counter, -1)
        end
    end
    returned[i] = removed
end
if lane_batch ~= "" then
    if any then
        redis.call("HSET", lanes, lane_batch, lane_tenant)
    end
else
    redis.call("SADD", rq_queues, dest)
end
return returned
