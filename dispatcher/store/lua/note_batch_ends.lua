-- note_batch_ends(keys=[notifications, batch_info_1, batch_info_2, ...],
--                 args=[cursor_field, cursor, url_field, event_id_1, batch_id_1, event_id_2, batch_id_2, ...])
-- The notifier's step along the event stream (observe/notifier.py): of the batch_ended events
-- it has just read, those whose batch has a notify URL (url_field) become notifications to
-- send (notifications: event id -> batch id), and its cursor moves to the last entry it read,
-- in one step, so set_notify.lua sees either the URL checked here or the cursor past the end.
-- Returns the number of notifications queued.
local queued = 0
for i = 2, #KEYS do
    if redis.call("HEXISTS", KEYS[i], ARGV[3]) == 1 then
        redis.call("HSET", KEYS[1], ARGV[2 * i], ARGV[2 * i + 1])
        queued = queued + 1
    end
end
redis.call("HSET", KEYS[1], ARGV[1], ARGV[2])
return queued
