-- A library, not a script (its name starts with "_"): scripts.py puts it in front of each
-- script that names it in a line "--@include _batch_ended", after "--@include _events".
-- counted(stream, max_len, batch_info, batch_id): one of the batch's outcome counters (the
-- batch HASH's finished, failed, canceled: job.BatchCounter) has just gone up by one. When that
-- made them add up to its size, the batch has ended, here and only here: its batch_ended
-- event, whose id the batch HASH keeps in ended_event (set_notify.lua compares it with the
-- notifier's cursor). A batch that `submit --resume` or `requeue --failed` reopens (they take
-- their jobs back out of the counters) ends again when its last job does.
local function counted(stream, max_len, batch_info, batch_id)
    local c = redis.call("HMGET", batch_info, "size", "finished", "failed", "canceled")
    local size = tonumber(c[1])
    local finished, failed, canceled = tonumber(c[2]) or 0, tonumber(c[3]) or 0, tonumber(c[4]) or 0
    if size and finished + failed + canceled == size then
        local id = event(stream, max_len, "event", "batch_ended", "batch", batch_id, "size", c[1],
            "finished", finished, "failed", failed, "canceled", canceled)
        redis.call("HSET", batch_info, "ended_event", id)
    end
end
