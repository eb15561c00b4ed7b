-- feed_ingress(keys=[rq_queues, flight, tenants, ingress_1, lanes_1, ingress_2, lanes_2, ...,
--                    then the planned lanes of every priority, in order],
--              args=[flight_field, job_key_prefix, count_left, n_priorities,
--                    then per priority: ingress_name, lane_key_prefix, budget, n_planned,
--                    then per planned lane: batch, tenant, n])
-- The dispatcher's step from the lanes (a batch's LIST of waiting jobs of one priority,
-- keys.lane_queue) to the ingress of their priority, for every priority in one step, and what
-- its next fair-share plan needs. Per priority, jobs go from the head of lanes onto the tail
-- of its ingress: up to n_i from each planned lane in turn (the dispatcher's plan), then what
-- the planned lanes took short of `budget`, spread evenly over every lane in its lanes HASH
-- (lanes the plan did not know yet, so a batch submitted since the dispatcher's last read
-- starts at once; a planned lane found empty gives its share to the others; the fleet's
-- room is used whatever the plan foresaw). A tenant never
-- gets more in flight than its max_running (keys.tenants, read here, so the quota holds
-- whatever the dispatcher last read).
-- Each job taken gets the ingress as its `origin` and enters its tenant's count of jobs in
-- flight (_flight); a lane found empty (it gave less than was asked) leaves the lanes HASH (a
-- submit pushes its jobs before it registers the lane, so a lane with jobs is never left
-- out). An id whose HASH is gone leaves its lane and goes nowhere (no stray HASH is made).
-- Returns {per priority {{taken, left} per planned lane, {batch, tenant, taken, left} per
-- lane that took a share of the rest, jobs left in all its lanes (counted only when count_left is "1", else 0), its
-- ingress's length, its lanes HASH}, the tenants HASH, the flight HASH}; `left` is 0 for a
-- lane found empty, -1 (not known) for one that gave all that was asked.
local rq_queues, flight, tenants = KEYS[1], KEYS[2], KEYS[3]
local flight_field, job_prefix, count_left = ARGV[1], ARGV[2], ARGV[3] == "1"
local n_priorities = tonumber(ARGV[4])
local settings_flat = redis.call("HGETALL", tenants)
local settings, room_of = {}, {}  -- room_of: tenant -> how many more it may take in (false: no quota)
for i = 1, #settings_flat, 2 do
    settings[settings_flat[i]] = settings_flat[i + 1]
end
local function room(tenant)
    if room_of[tenant] == nil then
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
local function take(fed, lanes, ingress_name, lane, batch, tenant, n)
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
local reply = {}
local at_arg, at_key = 5 + 4 * n_priorities, 4 + 2 * n_priorities
for p = 1, n_priorities do
    local ingress, lanes = KEYS[2 + 2 * p], KEYS[3 + 2 * p]
    local ingress_name, lane_prefix = ARGV[1 + 4 * p], ARGV[2 + 4 * p]
    local spare, n_planned = tonumber(ARGV[3 + 4 * p]), tonumber(ARGV[4 + 4 * p])
    local fed, planned, others = {}, {}, {}
    for i = 1, n_planned do
        local batch, tenant, n = ARGV[at_arg], ARGV[at_arg + 1], tonumber(ARGV[at_arg + 2])
        local taken, left = take(fed, lanes, ingress_name, KEYS[at_key], batch, tenant, n)
        planned[i] = {taken, left}
        spare = spare - taken
        at_arg, at_key = at_arg + 3, at_key + 1
    end
    local lanes_now = nil  -- the lanes HASH after this feed, when the spare share read it
    if spare > 0 then  -- every lane still holding jobs, the planned ones too, shares what is left
        local all, rest = redis.call("HGETALL", lanes), {}
        for i = 1, #all, 2 do
            rest[#rest + 1] = {all[i], all[i + 1]}
        end
        local each = math.ceil(spare / math.max(1, #rest))
        for _, lane in ipairs(rest) do
            if spare <= 0 then
                break
            end
            local taken, left = take(fed, lanes, ingress_name, lane_prefix .. lane[1], lane[1], lane[2],
                math.min(each, spare))
            spare = spare - taken
            others[#others + 1] = {lane[1], lane[2], taken, left}
        end
        local found_empty = {}
        for _, o in ipairs(others) do
            if o[4] == 0 then
                found_empty[o[1]] = true
            end
        end
        lanes_now = {}
        for _, lane in ipairs(rest) do
            if not found_empty[lane[1]] then
                lanes_now[#lanes_now + 1] = lane[1]
                lanes_now[#lanes_now + 1] = lane[2]
            end
        end
    end
    local length = redis.call("LLEN", ingress)
    for first = 1, #fed, 1000 do  -- unpack() is bounded by Lua's C stack
        length = redis.call("RPUSH", ingress, unpack(fed, first, math.min(first + 999, #fed)))
    end
    if #fed > 0 then
        redis.call("SADD", rq_queues, ingress)
    end
    lanes_now = lanes_now or redis.call("HGETALL", lanes)
    local waiting = 0
    if count_left then
        for i = 1, #lanes_now, 2 do
            waiting = waiting + redis.call("LLEN", lane_prefix .. lanes_now[i])
        end
    end
    reply[p] = {planned, others, waiting, length, lanes_now}
end
return {reply, settings_flat, redis.call("HGETALL", flight)}
