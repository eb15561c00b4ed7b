"""Tenants: their settings (weight, quotas) kept in Redis, and what each has waiting and in flight.

Every job belongs to its batch's tenant (`submit --tenant`, default keys.DEFAULT_TENANT). A
tenant's settings are one JSON value in keys.tenants; a tenant without settings has weight 1
and no quota. Jobs *waiting* are those in the tenant's lanes (not yet taken by the dispatcher);
jobs *in flight* were taken: about to be routed, queued on a node, or running
(keys.tenant_flight, kept by the scripts that move and end jobs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from redis import Redis
from rq.utils import as_text

from ..errors import GpufleetError
from ..store.keys import DEFAULT_TENANT, PRIORITIES, Keys, tenant_problem


@dataclass(frozen=True)
class Waiting:
    """The jobs waiting at one priority: in its ingress (taken from lanes, or put back), and in
    its lanes by tenant."""

    ingress: int
    lanes: Mapping[str, int]  # tenant -> jobs in its lanes

    @property
    def total(self) -> int:
        return self.ingress + sum(self.lanes.values())


def read_waiting_counts(r: Redis, keys: Keys) -> dict[str, Waiting]:
    """Priority -> Waiting, in two pipelined round trips (the ingresses and the lanes, then
    each lane's length)."""
    with r.pipeline(transaction=False) as p:
        for priority in PRIORITIES:
            p.llen(Keys.rq_queue(keys.ingress_queue(priority)))
            p.hgetall(keys.lanes(priority))
        replies = p.execute()
    lanes = {priority: {as_text(b): as_text(t) for b, t in replies[2 * i + 1].items()}
             for i, priority in enumerate(PRIORITIES)}  # fmt: skip
    with r.pipeline(transaction=False) as p:
        for priority, of_batch in lanes.items():
            for batch_id in of_batch:
                p.llen(Keys.rq_queue(keys.lane_queue(priority, batch_id)))
        lengths = iter(p.execute())
    waiting = {}
    for i, (priority, of_batch) in enumerate(lanes.items()):
        by_tenant: dict[str, int] = {}
        for tenant in of_batch.values():
            by_tenant[tenant] = by_tenant.get(tenant, 0) + int(next(lengths))
        waiting[priority] = Waiting(int(replies[2 * i]), by_tenant)
    return waiting


@dataclass(frozen=True)
class TenantSettings:
    """A tenant's share and quotas (None: no quota)."""

    weight: float = 1.0  # its share of freed slots against the other tenants with work
    max_running: int | None = None  # at most this many of its jobs in flight at once
    max_queued: int | None = None  # a submit that would leave more waiting is refused whole

    def to_json(self) -> str:
        return json.dumps({"weight": self.weight, "max_running": self.max_running, "max_queued": self.max_queued},
                          separators=(",", ":"))  # fmt: skip

    @classmethod
    def from_json(cls, raw: str | bytes | None) -> TenantSettings:
        """Settings from a keys.tenants value; anything unreadable counts as the defaults (one
        bad value must not stop the dispatcher)."""
        try:
            data = json.loads(raw) if raw else {}
            weight = float(data.get("weight", 1.0))
            return cls(weight if math.isfinite(weight) and weight > 0 else 1.0,
                       _cap(data.get("max_running")), _cap(data.get("max_queued")))  # fmt: skip
        except (ValueError, TypeError, AttributeError):
            return cls()


def _cap(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def parse_tenants(raw: Mapping[bytes, bytes]) -> dict[str, TenantSettings]:
    """Tenant -> settings, from HGETALL keys.tenants."""
    return {as_text(t): TenantSettings.from_json(v) for t, v in raw.items()}


def read_tenants(r: Redis, keys: Keys) -> dict[str, TenantSettings]:
    return parse_tenants(r.hgetall(keys.tenants))  # type: ignore[arg-type]


def check_tenant(tenant: str) -> str:
    """`tenant`, or a GpufleetError saying why it cannot name one."""
    if problem := tenant_problem(tenant):
        raise GpufleetError(problem)
    return tenant


def set_tenant(r: Redis, keys: Keys, tenant: str, *, weight: float | None = None,
               quotas: Mapping[str, int | None] | None = None) -> TenantSettings:  # fmt: skip
    """Change a tenant's settings and return them: `weight` when given, and each quota named in
    `quotas` ("max_running", "max_queued"; None removes it); the rest stays as it was."""
    check_tenant(tenant)
    if weight is not None and not (math.isfinite(weight) and weight > 0):
        raise GpufleetError(f"--weight must be a number above 0, not {weight}")
    quotas = dict(quotas or {})
    for name, cap in quotas.items():
        if name not in ("max_running", "max_queued"):
            raise GpufleetError(f"no tenant quota {name!r}")
        if cap is not None and cap < 0:
            raise GpufleetError(f"--{name.replace('_', '-')} must be 0 or more, not {cap}")
    before = TenantSettings.from_json(r.hget(keys.tenants, tenant))
    after = replace(before, weight=before.weight if weight is None else weight, **quotas)
    r.hset(keys.tenants, tenant, after.to_json())
    return after


@dataclass(frozen=True)
class TenantUsage:
    """One tenant as `tenant list` and `status` show it."""

    tenant: str
    settings: TenantSettings
    waiting: int  # jobs in its lanes, every priority
    in_flight: int  # jobs taken from its lanes and not ended

    def as_json(self) -> dict[str, Any]:
        s = self.settings
        return {"tenant": self.tenant, "weight": s.weight, "max_running": s.max_running, "max_queued": s.max_queued,
                "waiting": self.waiting, "in_flight": self.in_flight}  # fmt: skip


def tenant_usage(waiting: Mapping[str, Waiting], flight: Mapping[str, int],
                 settings: Mapping[str, TenantSettings]) -> list[TenantUsage]:  # fmt: skip
    """Every tenant with settings, work waiting or jobs in flight, by name."""
    lanes: dict[str, int] = {}
    for w in waiting.values():
        for tenant, n in w.lanes.items():
            lanes[tenant] = lanes.get(tenant, 0) + n
    names = sorted(set(settings) | set(lanes) | {t for t, n in flight.items() if n > 0})
    return [TenantUsage(t, settings.get(t, TenantSettings()), lanes.get(t, 0), max(0, flight.get(t, 0)))
            for t in names]  # fmt: skip


def read_waiting(r: Redis, keys: Keys) -> tuple[dict[str, Waiting], list[TenantUsage]]:
    """The jobs waiting at each priority, and tenant_usage (three round trips)."""
    waiting = read_waiting_counts(r, keys)
    with r.pipeline(transaction=False) as p:
        p.hgetall(keys.tenant_flight)
        p.hgetall(keys.tenants)
        flight, settings = p.execute()
    return waiting, tenant_usage(waiting, {as_text(t): int(n) for t, n in flight.items()}, parse_tenants(settings))


def read_usage(r: Redis, keys: Keys) -> list[TenantUsage]:
    return read_waiting(r, keys)[1]


def batch_tenant(r: Redis, keys: Keys, batch_id: str) -> str:
    """The tenant batch `batch_id` belongs to (a batch from before tenants: the default)."""
    tenant = r.hget(keys.batch_info(batch_id), "tenant")
    return as_text(tenant) if tenant else DEFAULT_TENANT


def check_room_to_queue(r: Redis, keys: Keys, tenant: str, adding: int) -> None:
    """Refuse (GpufleetError) a submit of `adding` jobs that would leave more of the tenant's
    jobs waiting than its max_queued."""
    cap = TenantSettings.from_json(r.hget(keys.tenants, tenant)).max_queued
    if cap is None:
        return
    waiting = sum(w.lanes.get(tenant, 0) for w in read_waiting_counts(r, keys).values())
    if waiting + adding > cap:
        raise GpufleetError(f"tenant {tenant!r} may have at most {cap} jobs waiting; it has {waiting} and this "
                            f"submit adds {adding}: nothing was submitted (raise it with "
                            f"`gpufleet tenant set {tenant} --max-queued N`)")  # fmt: skip
