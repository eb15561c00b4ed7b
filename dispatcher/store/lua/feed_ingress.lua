-- feed_ingress(keys=[ingress, rq_queues, lanes, flight, tenants, lane_1 .. lane_k],
--              args=[ingress_name, flight_field, job_key_prefix, lane_key_prefix, budget, count_left,
--                    batch_1, tenant_1, n_1, ...])
-- Take jobs from the head of lanes (a batch's LIST of waiting jobs of one priority,
-- keys.lane_queue) onto the tail of the ingress, in one step: up to n_i from each planned lane
-- in turn (the dispatcher's fair-share plan), then what the planned lanes took short of
-- `budget`, spread evenly over the other lanes in the lanes HASH (lanes the plan did not know
-- yet: a batch submitted since the dispatcher's last read starts at once). A tenant never gets more in flight than its
-- max_running (keys.tenants, read here, so the quota holds whatever the dispatcher last read).
-- Each job taken gets the ingress as its `origin` and enters its tenant's count of jobs in
-- flight (_flight); a lane found empty (it gave less than was asked) leaves the lanes HASH (a
-- submit pushes its jobs before it registers the lane, so a lane with jobs is never left out). An id whose HASH is gone
-- leaves its lane and goes nowhere (no stray HASH is made).
-- Returns {{taken, left in the lane} per planned lane, {batch, tenant, taken, left} per other
-- lane, the jobs left in all the lanes (counted only when count_left is "1", else 0)}; `left`
-- is 0 for a lane found empty, -1 (not known) for one that gave all that was asked. A planned
-- lane found empty gives its share of `budget` to the other lanes, so a plan made before a
-- lane ran dry costs the round nothing.
local ingress, rq_queues, lanes, flight, tenants = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local ingress_name, flight_field, job_prefix, lane_prefix = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local spare, count_left = tonumber(ARGV[5]), ARGV[6] == "1"  -- spare: the budget, less what planned lanes take
local settings, room_of = nil, {}  -- tenant -> how many more it may take in (false: no quota)
local function room(tenant)
    if room_of[tenant] == nil then
        if settings == nil then  -- every tenant's settings in one read, the first time one is needed
            settings = {}
            local all = redis.call("HGETALL", tenants)
            for i = 1, #all, 2 do
                settings[all[i]] = all[i + 1]
            end
        end
        room_of[tenant] = false
        local raw = settings[tenant]
        if raw then
            local ok, s = pcall(cjson.decode, raw)
            if ok and type(s) == "table" and type(s.max_running) == "number" then
                room_of[tenant] = math.max(0, s.max_running - tonumber(redis.call("HGET", flight, tenant) or "0"))
            end
        end
    end
    return room_of[tenant]
end
local fed = {}  -- every id taken, in order: one RPUSH at the end
local function take(lane, batch, tenant, n)
    local r = room(tenant)
    if r then
        n = math.min(n, r)
    end
    local taken, entered, read = 0, 0, 0
    if n > 0 then
        local ids = redis.call("LPOP", lane, n) or {}  -- nil (false) when the lane is empty
        read = #ids
        for _, job_id in ipairs(ids) do
            -- a job in a lane is never in flight (see _flight), so it is marked with one HSET: it
            -- adds the mark, and origin too only when the job had none, i.e. there was no job
            local job = job_prefix .. job_id
            local added = redis.call("HSET", job, "origin", ingress_name, flight_field, tenant)
            if added == 2 and redis.call("HLEN", job) == 2 then
                redis.call("DEL", job)  -- HSET made it: there was no job
            else
                taken = taken + 1
                fed[#fed + 1] = job_id
                entered = entered + math.min(added, 1)
            end
        end
    end
    if entered > 0 then
        redis.call("HINCRBY", flight, tenant, entered)
    end
    if r then
        room_of[tenant] = r - entered
    end
    local left = -1  -- not known: the lane gave all that was asked (or nothing was asked)
    if n > 0 and read < n then
        left = 0
        redis.call("HDEL", lanes, batch)
    end
    return taken, left
end
local planned, others, is_planned = {}, {}, {}
for i = 1, #KEYS - 5 do
    local batch, tenant, n = ARGV[3 * i + 4], ARGV[3 * i + 5], tonumber(ARGV[3 * i + 6])
    is_planned[batch] = true
    local taken, left = take(KEYS[5 + i], batch, tenant, n)
    planned[i] = {taken, left}
    spare = spare - taken
end
if spare > 0 then
    local all, rest = redis.call("HGETALL", lanes), {}
    for i = 1, #all, 2 do
        if not is_planned[all[i]] then
            rest[#rest + 1] = {all[i], all[i + 1]}
        end
    end
    local each = math.ceil(spare / math.max(1, #rest))
    for _, lane in ipairs(rest) do
        if spare <= 0 then
            break
        end
        local taken, left = take(lane_prefix .. lane[1], lane[1], lane[2], math.min(each, spare))
        spare = spare - taken
        others[#others + 1] = {lane[1], lane[2], taken, left}
    end
end
for first = 1, #fed, 1000 do  -- unpack() is bounded by Lua's C stack
    redis.call("RPUSH", ingress, unpack(fed, first, math.min(first + 999, #fed)))
end
if #fed > 0 then
    redis.call("SADD", rq_queues, ingress)
end
local waiting = 0
if count_left then
    local all = redis.call("HGETALL", lanes)
    for i = 1, #all, 2 do
        waiting = waiting + redis.call("LLEN", lane_prefix .. all[i])
    end
end
return {planned, others, waiting}
