-- apply_fenced(keys=[started], args=[group_1 .. group_n])
--   group := member, n_commands, then per command: n_args, command name, arg_2 .. arg_n
-- A worker writes the outcome of its jobs (result, failure, retry: what rq's own methods queue
-- on a pipeline) as one atomic step, each job's writes only while its execution is still
-- current: `member` ("job_id:execution_id") still in the node queue's started registry, so
-- nobody has handed the job back meanwhile (its node declared dead, a new incarnation
-- recovering it). The check and the writes are one step: a worker stopped (SIGSTOP) or slowed
-- between a check and a write cannot write a late result, as it could after a separate check.
-- A group whose member is "" is always applied (the worker's own bookkeeping). The commands
-- name their keys in ARGV, like the rq calls they come from: fine on one Redis, not on Redis
-- Cluster, which gpufleet does not use. Returns 1 (applied) or 0 (late: skipped) per group.
local applied = {}
local i = 1
while i <= #ARGV do
    local member, n_commands = ARGV[i], tonumber(ARGV[i + 1])
    i = i + 2
    local current = member == "" or redis.call("ZSCORE", KEYS[1], member) ~= false
    for _ = 1, n_commands do
        local n_args = tonumber(ARGV[i])
        if current then
            redis.call(unpack(ARGV, i + 1, i + n_args))
        end
        i = i + 1 + n_args
    end
    applied[#applied + 1] = current and 1 or 0
end
return applied
