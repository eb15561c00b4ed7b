-- A library, not a script (its name starts with "_"): scripts.py puts it in front of each
-- script that names it in a line "--@include _flight".
-- A tenant's jobs in flight (keys.tenant_flight: tenant -> count) are the ones taken from its
-- lanes and not yet ended: in an ingress, in a node queue, held or running. The job's
-- JobField.FLIGHT holds the tenant it is counted under, so entering and leaving are each
-- idempotent: a path may call them whatever happened to the job before.
-- enter_flight(job, flight_field, tenant): 1 when the job was not counted and now is (the
-- caller adds it to keys.tenant_flight), else 0. The job HASH must exist.
local function enter_flight(job, flight_field, tenant)
    return redis.call("HSETNX", job, flight_field, tenant)
end
-- leave_flight(flight, job, flight_field): take the job out of its tenant's count, if counted.
local function leave_flight(flight, job, flight_field)
    local tenant = redis.call("HGET", job, flight_field)
    if tenant then  -- a tenant's count stays in the HASH at 0 (one field per tenant that ever ran)
        redis.call("HDEL", job, flight_field)
        redis.call("HINCRBY", flight, tenant, -1)
    end
end
