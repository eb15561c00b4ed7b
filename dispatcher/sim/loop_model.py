"""The real-loop information model: the simulated fleet as the dispatcher loop sees it.

What the dispatcher knows and when (loop.py, snapshot.py, the worker's record step):
- A submitted job is routed a dispatch latency after it arrives (the submit wakes the loop,
  whose round reads the ingress heads and moves them).
- A run's end is counted by the worker's record step in Redis and taken off the router's
  counts in the next round: a dispatch latency after the end. Until then the node looks as
  busy as before; with no job queued on it, its slot idles that long.
- Every `snapshot_s` the loop re-reads every node: the counts are then the truth, ends not yet
  taken off included.
- A node's service time is the worker's EWMA of its run times (weight SERVICE_TIME_EWMA_ALPHA),
  sent with its heartbeat every `heartbeat_s` on the node's own phase; routing sees the last
  one sent. The thresholds are solved from those noisy figures.
- Each run takes `job_overhead_s` beyond its work: what a worker's slot spends per job on its
  own (the take, decoding, the record), which weighs most on the fastest node.
- The router's dispatch latency (the derived prefetch) is the simulated one; the arrival rate
  is the true one (the loop measures it over seconds).
Times in `SimConfig` are seconds; the simulation runs in mean service times of a speed-1 node
(`job_s` seconds).
"""

from __future__ import annotations

import heapq
import random
from collections import deque

from ..routing.models import SERVICE_TIME_EWMA_ALPHA, JobSpec, NodeState
from ..routing.policies import make_policy
from ..routing.router import Router
from .config import SimConfig
from .sim_fleet import FleetState, Outcome
from .workload import Workload

END_KNOWN, SNAPSHOT, BEAT = range(3)  # event kinds; ties go in this order


def run_loop(cfg: SimConfig, work: Workload) -> Outcome:
    """Dispatch through make_policy + Router as the loop sees the fleet (the module docstring)."""
    fleet = FleetState(cfg, work, cfg.job_overhead_s / cfg.job_s)
    n = len(cfg.speeds)
    latency, snapshot_every, beat_every = (s / cfg.job_s for s in (cfg.dispatch_latency_s, cfg.snapshot_s,
                                                                   cfg.heartbeat_s))  # fmt: skip
    policy = make_policy(cfg.policy, rng=random.Random(f"{cfg.seed}:policy"))
    router = Router(policy, prefetch=cfg.prefetch, max_node_queue=cfg.max_node_queue,
                    affinity_epsilon=cfg.affinity_epsilon, dispatch_latency_s=latency,
                    arrival_rate=work.rate)  # fmt: skip
    estimate = [1.0 / s for s in cfg.speeds]  # each worker's EWMA, converged at the start
    sent = list(estimate)  # ... as of its last heartbeat
    unseen: list[deque[float]] = [deque() for _ in range(n)]  # ends not taken off yet, by time
    index = {node_id: i for i, node_id in enumerate(fleet.ids)}
    plain = JobSpec(func="sim")
    ingress: deque[int] = deque()
    events: list[tuple[float, int, int, float]] = []  # (time, kind, node (-1: all), the end's time)
    rng = random.Random(f"{cfg.seed}:beats")
    for i in range(n):
        heapq.heappush(events, (rng.uniform(0, beat_every), BEAT, i, 0.0))
    heapq.heappush(events, (snapshot_every, SNAPSHOT, -1, 0.0))

    def read(i: int) -> NodeState:  # what a snapshot reads of node i
        return NodeState(node_id=fleet.ids[i], queued=len(fleet.waiting[i]), running=fleet.busy(i),
                         service_time_s=sent[i], speed=cfg.speeds[i])  # fmt: skip

    views = [read(i) for i in range(n)]

    def route(now: float) -> None:
        nonlocal views
        while ingress:
            moves, after = router.route([("", plain)], views, waiting=len(ingress) - 1)
            if not moves:
                return
            views = after
            fleet.place(ingress.popleft(), index[moves[0][1]], now)

    next_job, n_jobs = 0, len(work.arrivals)
    while next_job < n_jobs or fleet.heap or ingress:
        t_arrival = work.arrivals[next_job] + latency if next_job < n_jobs else float("inf")
        t_done = fleet.heap[0][0] if fleet.heap else float("inf")
        t_event = events[0][0] if events else float("inf")
        if t_done <= t_arrival and t_done <= t_event:
            i = fleet.complete(t_done)
            estimate[i] += SERVICE_TIME_EWMA_ALPHA * (fleet.last_run[i] - estimate[i])
            unseen[i].append(t_done)
            heapq.heappush(events, (t_done + latency, END_KNOWN, i, t_done))
        elif t_arrival <= t_event:
            ingress.append(next_job)
            next_job += 1
            route(t_arrival)
        else:
            now, kind, i, ended_at = heapq.heappop(events)
            if kind == END_KNOWN:
                if unseen[i] and unseen[i][0] == ended_at:  # not taken off by a snapshot since
                    unseen[i].popleft()
                    views = router.ended(views, {fleet.ids[i]: 1})
                    route(now)
            elif kind == SNAPSHOT:
                for ends in unseen:
                    ends.clear()
                views = [read(j) for j in range(n)]
                route(now)
                if next_job < n_jobs or fleet.heap or ingress:
                    heapq.heappush(events, (now + snapshot_every, SNAPSHOT, -1, 0.0))
            else:  # BEAT
                sent[i] = estimate[i]
                if next_job < n_jobs or fleet.heap:
                    heapq.heappush(events, (now + beat_every, BEAT, i, 0.0))
    return fleet.outcome()
