"""The simulated fleet: event loops for routed dispatch and for the central-queue bound.

Each node has one slot and a FIFO queue. Events are arrivals (a pre-drawn stream),
completions (a heap, at most one per node) and heartbeats (every `stale`: one node at a
time on its own phase, or all together under the bulletin model).
Per event the loops do O(1) work of their own; the router and policy calls are the
O(nodes) part, as in the real dispatcher.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass

from ..routing.models import JobSpec, NodeState
from ..routing.policies import make_policy
from ..routing.router import Router
from .config import SimConfig
from .workload import Workload

INF = float("inf")


@dataclass
class Outcome:
    """What a run produced: every job's time in system (arrival order) and per-node totals."""

    node_ids: list[str]
    time_in_system: list[float]
    served: list[int]
    busy_time: list[float]
    makespan: float


def node_ids_for(n: int) -> list[str]:
    """Zero-padded ids, so node-id order (ties, round robin) is index order."""
    width = len(str(n - 1))
    return [f"n{i:0{width}d}" for i in range(n)]


class FleetState:
    """The true state of the simulated nodes: who runs what, who waits where, for how long."""

    def __init__(self, cfg: SimConfig, work: Workload, overhead: float = 0.0) -> None:
        self.ids = node_ids_for(len(cfg.speeds))
        self.speeds = list(cfg.speeds)
        self.work = work
        self.overhead = overhead  # added to every run: a slot's own cost per job (the loop model's)
        n = len(self.ids)
        self.waiting: list[deque[int]] = [deque() for _ in range(n)]
        self.running = [-1] * n
        self.started = [0.0] * n
        self.served = [0] * n
        self.busy_time = [0.0] * n
        self.last_run = [0.0] * n  # how long each node's last completed job ran
        self.done = [0.0] * len(work.arrivals)
        self.heap: list[tuple[float, int]] = []
        self.end = 0.0

    def start(self, job: int, i: int, now: float) -> None:
        self.running[i] = job
        self.started[i] = now
        heapq.heappush(self.heap, (now + self.work.works[job] / self.speeds[i] + self.overhead, i))

    def place(self, job: int, i: int, now: float) -> None:
        if self.running[i] < 0:
            self.start(job, i, now)
        else:
            self.waiting[i].append(job)

    def complete(self, now: float) -> int:
        """Finish the earliest running job, start the node's next one; returns the node."""
        _, i = heapq.heappop(self.heap)
        job = self.running[i]
        self.done[job] = now - self.work.arrivals[job]
        self.served[i] += 1
        self.last_run[i] = now - self.started[i]
        self.busy_time[i] += self.last_run[i]
        self.end = now
        if self.waiting[i]:
            self.start(self.waiting[i].popleft(), i, now)
        else:
            self.running[i] = -1
        return i

    def held(self, i: int) -> int:
        return len(self.waiting[i]) + (self.running[i] >= 0)

    def busy(self, i: int) -> int:
        return int(self.running[i] >= 0)

    def heartbeat(self, i: int, base: NodeState, reported_busy: int | None = None) -> NodeState:
        """What the dispatcher reads for node i now: its current queue length, and `running`
        and utilization as its worker reports them (`reported_busy`; None: current)."""
        busy = self.busy(i) if reported_busy is None else reported_busy
        return NodeState(
            node_id=base.node_id,
            capacity=1,
            queued=len(self.waiting[i]),
            running=busy,
            gpu_util=float(busy),
            mem_util=float(busy),
            service_time_s=base.service_time_s,
            speed=base.speed,
            weight=base.weight,
        )

    def outcome(self) -> Outcome:
        return Outcome(self.ids, self.done, self.served, self.busy_time, self.end)


class _Beats:
    """Independent heartbeats: node i beats at phase_i + k * period, phase_i uniform in
    [0, period), so the beats come in one fixed cyclic order (no heap needed)."""

    def __init__(self, n: int, period: float, rng: random.Random) -> None:
        phases = [rng.uniform(0.0, period) for _ in range(n)]
        self.order = sorted(range(n), key=phases.__getitem__)
        self.phases = sorted(phases)
        self.period = period
        self.pos = 0
        self.base = 0.0
        self.next_at = self.phases[0]

    def advance(self) -> int:
        """The node that beats at `next_at`; moves on to the next beat."""
        i = self.order[self.pos]
        self.pos += 1
        if self.pos == len(self.order):
            self.pos, self.base = 0, self.base + self.period
        self.next_at = self.base + self.phases[self.pos]
        return i


def run_routed(cfg: SimConfig, work: Workload) -> Outcome:
    """Dispatch through make_policy + Router, with late binding unless max_node_queue=0."""
    fleet = FleetState(cfg, work)
    n = len(cfg.speeds)
    index = {node_id: i for i, node_id in enumerate(fleet.ids)}
    base = [NodeState(node_id=nid, speed=s, weight=s, service_time_s=1.0 / s) for nid, s in zip(fleet.ids, cfg.speeds)]
    policy = make_policy(cfg.policy, rng=random.Random(f"{cfg.seed}:policy"))
    router = Router(policy, prefetch=cfg.prefetch, max_node_queue=cfg.max_node_queue,
                    affinity_epsilon=cfg.affinity_epsilon, arrival_rate=work.rate)  # fmt: skip
    specs = [JobSpec(func="sim", affinity=f"k{k}") for k in range(cfg.affinity_keys)]
    plain = JobSpec(func="sim")
    bulletin = cfg.stale > 0 and cfg.stale_model == "bulletin"
    beats = _Beats(n, cfg.stale, random.Random(f"{cfg.seed}:beats")) if cfg.stale > 0 and not bulletin else None
    reported = [0] * n  # heartbeat model: `running` as of each node's last beat (all idle at t=0)
    views = list(base)  # what the router sees
    dirty: set[int] = set()  # fresh and heartbeat: nodes whose view is out of date
    held = {node_id: 0 for node_id in fleet.ids}  # bulletin: current job counts for the bound
    ingress: deque[int] = deque()
    bounded = cfg.max_node_queue != 0

    def try_route(job: int, now: float, waiting: int = 0) -> bool:
        if not bulletin:
            for i in dirty:
                views[i] = fleet.heartbeat(i, base[i], reported[i] if beats else None)
            dirty.clear()
        key = work.keys[job]
        spec = specs[key] if key >= 0 else plain
        moves, after = router.route([("", spec)], views, held=held if bulletin else None, waiting=waiting)
        if not moves:
            return False
        i = index[moves[0][1]]
        if bulletin:
            held[fleet.ids[i]] += 1
            if cfg.inflight_accounting:
                views[i] = after[i]
        else:
            dirty.add(i)
        fleet.place(job, i, now)
        return True

    def route_waiting(now: float) -> None:
        """While jobs wait, place them from the head until one finds no node: an end frees one
        slot, an arrival may meet a slower class's threshold (the jobs behind the head count)."""
        while ingress and try_route(ingress[0], now, len(ingress) - 1):
            ingress.popleft()

    next_job, n_jobs = 0, len(work.arrivals)
    next_refresh = cfg.stale if bulletin else INF
    while next_job < n_jobs or fleet.heap or (beats and ingress):  # a beat may free room for the last jobs
        t_arrival = work.arrivals[next_job] if next_job < n_jobs else INF
        t_done = fleet.heap[0][0] if fleet.heap else INF
        t_beat = beats.next_at if beats else next_refresh
        if t_beat <= t_arrival and t_beat <= t_done:
            if beats:  # one node beats; a changed `running` may open room for a waiting job
                i = beats.advance()
                if reported[i] != fleet.busy(i):
                    reported[i] = fleet.busy(i)
                    dirty.add(i)
                    route_waiting(t_beat)
            else:
                views = [fleet.heartbeat(i, base[i]) for i in range(n)]
                next_refresh += cfg.stale
        elif t_done <= t_arrival:
            i = fleet.complete(t_done)
            if bulletin:
                held[fleet.ids[i]] -= 1
            else:
                dirty.add(i)
            route_waiting(t_done)
        else:
            job, next_job = next_job, next_job + 1
            if not (bounded and ingress) and try_route(job, t_arrival):
                continue
            ingress.append(job)
            if len(ingress) > 1 and router.gated:  # one more waiting may open a slower class
                route_waiting(t_arrival)
    if ingress:  # only when no node could ever take them (none eligible)
        raise RuntimeError(f"{len(ingress)} jobs were never placed")
    return fleet.outcome()


def run_central_queue(cfg: SimConfig, work: Workload) -> Outcome:
    """The reference: one FIFO every node pulls from as it frees up; an arrival that finds
    several nodes idle goes to the fastest (ties: lowest id)."""
    fleet = FleetState(cfg, work)
    idle = [(-s, i) for i, s in enumerate(cfg.speeds)]
    heapq.heapify(idle)
    fifo: deque[int] = deque()
    next_job, n_jobs = 0, len(work.arrivals)
    while next_job < n_jobs or fleet.heap:
        t_arrival = work.arrivals[next_job] if next_job < n_jobs else INF
        if fleet.heap and fleet.heap[0][0] <= t_arrival:
            now = fleet.heap[0][0]
            i = fleet.complete(now)
            if fleet.running[i] < 0:
                if fifo:
                    fleet.start(fifo.popleft(), i, now)
                else:
                    heapq.heappush(idle, (-fleet.speeds[i], i))
        else:
            job, next_job = next_job, next_job + 1
            if idle:
                fleet.start(job, heapq.heappop(idle)[1], t_arrival)
            else:
                fifo.append(job)
    return fleet.outcome()
