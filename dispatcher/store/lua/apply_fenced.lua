-- apply_fenced(keys=[started, ended], args=[node_id, group_1 .. group_n])
--   group := member, n_commands, then per command: n_args, command name, arg_2 .. arg_n
-- A worker writes the outcome of its jobs (result, failure, retry: what rq's own methods queue
-- on a pipeline) as one atomic step, each job's writes only while its execution is still
-- current: `member` ("job_id:execution_id") still in the node queue's started registry, so
-- nobody has handed the job back meanwhile (its node declared dead, a new incarnation
-- recovering it). The check and the writes are one step: a worker stopped (SIGSTOP) or slowed
-- between a check and a write cannot write a late result, as it could after a separate check.
-- Each group applied under a member is a run that ended on `node_id`: it is counted in the
-- `ended` HASH (keys.dispatch_ended), so the dispatcher knows at once that the node has a slot
-- free, without re-reading the fleet. A late group counts nothing: whoever handed the job back
-- took it out of the started registry already.
-- A group whose member is "" is always applied (the worker's own bookkeeping). The commands
-- name their keys in ARGV, like the rq calls they come from: fine on one Redis, not on Redis
-- Cluster, which gpufleet does not use. Returns 1 (applied) or 0 (late: skipped) per group.
local applied = {}
local ended = 0
local i = 2
while i <= #ARGV do
    local member, n_commands = ARGV[i], tonumber(ARGV[i + 1])
    i = i + 2
    local current = member == "" or redis.call("ZSCORE", KEYS[1], member) ~= false
    if current and member ~= "" then
        ended = ended + 1
    end
    for _ = 1, n_commands do
        local n_args = tonumber(ARGV[i])
        if current then
            redis.call(unpack(ARGV, i + 1, i + n_args))
        end
        i = i + 1 + n_args
    end
    applied[#applied + 1] = current and 1 or 0
end
if ended > 0 then
    redis.call("HINCRBY", KEYS[2], ARGV[1], ended)
end
return applied
