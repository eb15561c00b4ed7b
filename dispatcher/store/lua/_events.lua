-- A library, not a script (its name starts with "_"): scripts.py puts it in front of each
-- script that names it in a line "--@include _events".
-- The event stream (keys.events; fields and kinds: store/events.py), written in the step that
-- makes the change it records.
-- event(stream, max_len, field_1, value_1, ...): append one event; the stream is trimmed to
-- about max_len entries (XADD MAXLEN ~ trims whole stream nodes only: cheap, and a few more are
-- kept). Returns the entry's id.
local function event(stream, max_len, ...)
    return redis.call("XADD", stream, "MAXLEN", "~", max_len, "*", ...)
end
