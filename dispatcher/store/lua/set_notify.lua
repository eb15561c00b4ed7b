-- set_notify(keys=[batch_info, notifications], args=[url_field, url, ended_event_field, batch_id, cursor_field])
-- Give a batch the URL that its summary is POSTed to when it ends (submit --notify; the
-- notifier, observe/notifier.py, sends it). The notifier decides when it reads the batch's
-- batch_ended event (note_batch_ends.lua); a URL set after that would be missed. So when the
-- batch has ended already (its counters add up to its size) and the notifier's cursor is at or
-- past its latest batch_ended event (ended_event_field), the notification is queued here
-- (notifications: event id -> batch id), as note_batch_ends would have queued it; before the
-- cursor gets there, note_batch_ends sees the URL. Both are one step each, so the
-- notification is queued once either way. Returns 1, or 0 when there is no such batch.
if redis.call("EXISTS", KEYS[1]) == 0 then
    return 0
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
local c = redis.call("HMGET", KEYS[1], ARGV[3], "size", "finished", "failed", "canceled")
local ended, size = c[1], tonumber(c[2])
if not ended or not size or (tonumber(c[3]) or 0) + (tonumber(c[4]) or 0) + (tonumber(c[5]) or 0) ~= size then
    return 1
end
local cursor = redis.call("HGET", KEYS[2], ARGV[5])
if cursor then
    local c_ms, c_seq = string.match(cursor, "^(%d+)-(%d+)$")
    local e_ms, e_seq = string.match(ended, "^(%d+)-(%d+)$")
    c_ms, c_seq, e_ms, e_seq = tonumber(c_ms), tonumber(c_seq), tonumber(e_ms), tonumber(e_seq)
    if c_ms > e_ms or (c_ms == e_ms and c_seq >= e_seq) then
        redis.call("HSET", KEYS[2], ended, ARGV[4])
    end
end
return 1
