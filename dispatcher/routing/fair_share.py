"""Which waiting jobs go next: weighted fair queueing between tenants, and between each
tenant's batches (pure: no Redis).

Start-time fair queueing over virtual time. Each tenant has a virtual time that advances by
1/weight for every job taken from it, and each batch one that advances by 1 (a tenant's
batches weigh the same). The next job comes from the tenant with work (and room under its
quota) of the least virtual time, and within it from its batch of the least virtual time.
A tenant or batch that starts to have work starts at the least virtual time of those that
already had work, so an idle spell banks no credit: the share is work-conserving (an idle
tenant's share goes to the others) and fair from the moment a tenant has work again.
Fairness chooses which job goes next; the routing policy chooses where it goes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Backlog:
    """What waits at one priority, as far as the dispatcher knows."""

    lanes: Mapping[str, str]  # batch id -> its tenant: the lanes that hold jobs
    depths: Mapping[str, int] = field(default_factory=dict)  # batch id -> jobs left (unknown: as many as asked)


@dataclass
class FairShare:
    """The virtual times of the tenants and batches that have work; `plan` proposes, `charge`
    records what was really taken."""

    tenant_time: dict[str, float] = field(default_factory=dict)
    batch_time: dict[str, float] = field(default_factory=dict)

    def plan(self, backlog: Backlog, n: int, weights: Mapping[str, float],
             room: Mapping[str, int]) -> dict[str, int]:  # fmt: skip
        """Up to `n` jobs to take: batch id -> how many. `weights`: tenant -> weight (missing:
        1); `room`: tenant -> how many more it may have in flight (missing: no quota).
        Tenants and batches without work are forgotten first (they start afresh when they
        have work again). The jobs are shared by levelling (see `serve` and `level`): what one
        job at a time to the least virtual time would give, up to a job per tenant and batch,
        except that a round of many tenants serves those furthest behind, in runs of jobs."""
        self._keep(backlog.lanes)
        batches: dict[str, list[str]] = {}
        for batch, tenant in backlog.lanes.items():
            if backlog.depths.get(batch, 1) > 0:
                batches.setdefault(tenant, []).append(batch)
        start = _start(self.tenant_time)
        for t in batches:  # a tenant with work starts level with those that had it, and keeps its place
            self.tenant_time.setdefault(t, start)
        tenant_time = {t: self.tenant_time[t] for t in batches}
        depth = {t: sum(backlog.depths[b] for b in bs) if all(b in backlog.depths for b in bs) else None
                 for t, bs in batches.items()}  # fmt: skip
        caps = {t: _least_cap(room.get(t), depth[t]) for t in batches}
        per_tenant = serve(tenant_time, {t: _weight(weights, t) for t in batches}, caps, n)
        taken: dict[str, int] = {}
        for tenant, count in per_tenant.items():
            of_tenant = batches[tenant]
            if len(of_tenant) == 1:  # its one batch takes its share (the tenant's cap was its depth)
                taken[of_tenant[0]] = count
                continue
            least = min((self.batch_time[b] for b in of_tenant if b in self.batch_time), default=0.0)
            for b in of_tenant:
                self.batch_time.setdefault(b, least)
            times = {b: self.batch_time[b] for b in of_tenant}
            taken.update(serve(times, dict.fromkeys(of_tenant, 1.0), {b: backlog.depths.get(b) for b in of_tenant},
                               count))  # fmt: skip
        return {b: k for b, k in taken.items() if k > 0}

    def charge(self, lanes: Mapping[str, str], taken: Mapping[str, int], weights: Mapping[str, float]) -> None:
        """Advance the virtual times by what was taken from each batch (lanes: batch -> tenant);
        a newcomer starts where `plan` started it, before anything is added."""
        taken = {b: n for b, n in taken.items() if n > 0 and b in lanes}
        start = _start(self.tenant_time)
        for batch in taken:
            self.tenant_time.setdefault(lanes[batch], start)
        new = [b for b in taken if b not in self.batch_time]
        if new:
            least: dict[str, float] = {}  # tenant -> the least virtual time of its batches
            for b, v in self.batch_time.items():
                if (t := lanes.get(b)) is not None:
                    least[t] = min(v, least.get(t, v))
            self.batch_time.update({b: least.get(lanes[b], 0.0) for b in new})
        for batch, count in taken.items():
            self.tenant_time[lanes[batch]] += count / _weight(weights, lanes[batch])
            self.batch_time[batch] += count

    def _keep(self, lanes: Mapping[str, str]) -> None:
        tenants = set(lanes.values())
        self.tenant_time = {t: v for t, v in self.tenant_time.items() if t in tenants}
        self.batch_time = {b: v for b, v in self.batch_time.items() if b in lanes}


MIN_SERVED = 8  # a round serves at least this many tenants (or batches of one tenant) with work...
MIN_TAKE = 16  # ...and more only while each gets this many jobs: fewer lanes touched per round


def serve(times: Mapping[str, float], weights: Mapping[str, float], caps: Mapping[str, int | None],
          n: int) -> dict[str, int]:  # fmt: skip
    """`level`, over the keys of least virtual time only: max(MIN_SERVED, n / MIN_TAKE) of
    them, then the next ones while jobs are left (their caps reached). A key left out comes
    first in a later round, its virtual time kept, so the shares hold over rounds, each key
    getting its jobs in runs of about MIN_TAKE."""
    order = sorted((k for k in times if caps.get(k) is None or (caps[k] or 0) > 0), key=lambda k: (times[k], k))
    per_turn = max(MIN_SERVED, n // MIN_TAKE)
    given: dict[str, int] = {}
    while n > 0 and order:
        turn, order = order[:per_turn], order[per_turn:]
        got = level({k: times[k] for k in turn}, weights, caps, n)
        given.update(got)
        n -= sum(got.values())
    return given


def level(times: Mapping[str, float], weights: Mapping[str, float], caps: Mapping[str, int | None],
          n: int) -> dict[str, int]:  # fmt: skip
    """Share `n` jobs among keys so their virtual times (time + jobs / weight) end as level as
    whole jobs allow, each within its cap (None: none), ties to the least time, then the
    name: what giving one job at a time to the least virtual time gives, up to one job per
    key, in time linear in the keys rather than in the jobs."""
    at = dict(times)
    given = dict.fromkeys(times, 0)
    open_keys = {k for k in times if caps.get(k) is None or (caps[k] or 0) > 0}
    while n > 0 and open_keys:
        order = sorted(open_keys, key=lambda k: (at[k], k))
        weight_sum = weighted = 0.0
        water = math.inf
        for i, k in enumerate(order):  # the level `water` at which n more jobs are used up
            weight_sum += weights[k]
            weighted += weights[k] * at[k]
            water = (n + weighted) / weight_sum
            if i + 1 == len(order) or water <= at[order[i + 1]]:
                break
        share = {k: max(0, math.floor((water - at[k]) * weights[k])) for k in order if at[k] < water}
        full = [k for k, g in share.items() if caps.get(k) is not None and given[k] + g >= (caps[k] or 0)]
        if full:  # they reach their cap first: give them that, then level the others again
            for k in full:
                g = (caps[k] or 0) - given[k]
                given[k], at[k], n = given[k] + g, at[k] + g / weights[k], n - g
                open_keys.discard(k)
            continue
        for k, g in share.items():
            given[k], at[k], n = given[k] + g, at[k] + g / weights[k], n - g
        for k in sorted(open_keys, key=lambda k: (at[k], k))[:n]:  # what flooring left: one each, least first
            given[k], at[k], n = given[k] + 1, at[k] + 1 / weights[k], n - 1
            if caps.get(k) is not None and given[k] >= (caps[k] or 0):
                open_keys.discard(k)
    return {k: g for k, g in given.items() if g > 0}


def _least_cap(*caps: int | None) -> int | None:
    known = [c for c in caps if c is not None]
    return min(known) if known else None


def _start(times: Mapping[str, float]) -> float:
    """Where a newcomer starts: the least virtual time of those with work (0 when none has)."""
    return min(times.values(), default=0.0)


def _weight(weights: Mapping[str, float], tenant: str) -> float:
    w = weights.get(tenant, 1.0)
    return w if w > 0 else 1.0
