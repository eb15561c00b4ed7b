-- take_ended(keys=[ended])
-- The dispatcher reads and resets the runs-ended counts (keys.dispatch_ended: node id -> runs
-- that ended there since its last read) in one step, so an end counted meanwhile is neither
-- lost nor taken twice. Queued in the pipeline that reads the ingress heads: one round trip.
-- Returns {node_id, count, node_id, count, ...}.
local ended = redis.call("HGETALL", KEYS[1])
if #ended > 0 then
    redis.call("DEL", KEYS[1])
end
return ended
