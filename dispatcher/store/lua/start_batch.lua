-- start_batch(keys=[batch_info, batches, events], args=[size_field, size, created_at, func, batch_id, tenant])
-- Claim a batch id: its HASH gets its size, creation time, function and tenant, and the batch joins
-- the list of batches (`gpufleet top`, `status`), only if no batch of that id exists yet, in
-- one step (a check and then separate writes would overwrite a batch another client claimed
-- in between). Its batch_submitted event goes to the event stream (store/events.py),
-- untrimmed: the scripts that start and end jobs, which run far more often, trim it. Returns 1
-- (claimed) or 0 (the id is taken).
if redis.call("HSETNX", KEYS[1], ARGV[1], ARGV[2]) == 0 then
    return 0
end
redis.call("HSET", KEYS[1], "created_at", ARGV[3], "func", ARGV[4], "tenant", ARGV[6])
redis.call("ZADD", KEYS[2], ARGV[3], ARGV[5])
redis.call("XADD", KEYS[3], "*", "event", "batch_submitted", "batch", ARGV[5], "size", ARGV[2], "func", ARGV[4],
    "tenant", ARGV[6])
return 1
