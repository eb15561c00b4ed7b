-- apply_fenced(keys=[started, ended, flight, events],
--              args=[node_id, job_key_prefix, flight_field, batch_key_prefix, events_max, group_1 .. group_n])
--   group := member, counted_batch, n_commands, then per command: n_args, command name, arg_2 .. arg_n
-- A worker writes the outcome of its jobs (result, failure, retry: what rq's own methods queue
-- on a pipeline) as one atomic step, each job's writes only while its execution is still
-- current: `member` ("job_id:execution_id") still in the node queue's started registry, so
-- nobody has handed the job back meanwhile (its node declared dead, a new incarnation
-- recovering it). The check and the writes are one step: a worker stopped (SIGSTOP) or slowed
-- between a check and a write cannot write a late result, as it could after a separate check.
-- Each group applied under a member is a run that ended on `node_id`: it is counted in the
-- `ended` HASH (keys.dispatch_ended), so the dispatcher knows at once that the node has a slot
-- free, without re-reading the fleet; and its job ("job_id" of the member) leaves its
-- tenant's jobs in flight (_flight): a retry waits in the retry schedule, out of flight. A late group counts nothing: whoever handed the job back
-- took it out of the started registry already.
-- A group with a counted_batch (a batch id; "" none) counts its job's end in that batch's
-- outcome counters: once it is applied, the batch is checked for its end (_batch_ended: its
-- batch_ended event when that job was its last).
-- A group whose member is "" is always applied (the worker's own bookkeeping). The commands
-- name their keys in ARGV, like the rq calls they come from: fine on one Redis, not on Redis
-- Cluster, which gpufleet does not use. Returns 1 (applied) or 0 (late: skipped) per group.
--@include _flight
--@include _events
--@include _batch_ended
local job_prefix, flight_field, batch_prefix, events_max = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local applied = {}
local ended = 0
local i = 6
while i <= #ARGV do
    local member, counted_batch, n_commands = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    local current = member == "" or redis.call("ZSCORE", KEYS[1], member) ~= false
    if current and member ~= "" then
        ended = ended + 1
        leave_flight(KEYS[3], job_prefix .. string.match(member, "^(.*):[^:]*$"), flight_field)
    end
    for _ = 1, n_commands do
        local n_args = tonumber(ARGV[i])
        if current then
            redis.call(unpack(ARGV, i + 1, i + n_args))
        end
        i = i + 1 + n_args
    end
    if current and counted_batch ~= "" then
        counted(KEYS[4], events_max, batch_prefix .. counted_batch, counted_batch)
    end
    applied[#applied + 1] = current and 1 or 0
end
if ended > 0 then
    redis.call("HINCRBY", KEYS[2], ARGV[1], ended)
end
return applied
