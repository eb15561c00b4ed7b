"""One simulation run's settings: the policy, the fleet, the load, the workload and the
information model (simulator.py's docstring explains the two stale models)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import SettingsError
from ..routing.policies import DEFAULT_POLICY, POLICY_NAMES

CENTRAL_QUEUE = "central-queue"
SIM_POLICY_NAMES = (*POLICY_NAMES, CENTRAL_QUEUE)
SERVICE_DISTRIBUTIONS = ("exp", "lognormal")
STALE_MODELS = ("heartbeat", "bulletin", "loop")  # simulator.py's docstring; loop: loop_model.py


@dataclass(frozen=True)
class SimConfig:
    """One simulation run; `__post_init__` refuses settings that cannot run."""

    policy: str = DEFAULT_POLICY
    speeds: tuple[float, ...] = (1.0,) * 10
    load: float = 0.9
    jobs: int = 100_000
    service: str = "exp"
    stale: float = 0.0
    stale_model: str = "heartbeat"
    max_node_queue: int | None = None  # None: capacity + prefetch (late binding); 0: unbounded
    prefetch: int | None = None  # None: derived from the dispatch latency, as the dispatcher's (0 here: instant)
    affinity_keys: int = 0
    affinity_epsilon: float = 0.25
    seed: int = 0
    warmup: float = 0.1  # share of the first jobs left out of the statistics
    inflight_accounting: bool = True  # bulletin only; False only to show the herding it prevents
    # the loop model (stale_model "loop", loop_model.py): seconds, as the dispatcher measures them
    job_s: float = 0.5  # a speed-1 node's mean run time
    dispatch_latency_s: float = 0.003  # from a submit or an end to the loop's round acting on it
    snapshot_s: float = 0.15  # Settings.snapshot_interval_s
    heartbeat_s: float = 1.0  # Settings.heartbeat_interval_s: how often a node's service time is sent
    # a slot's own time per job beyond the work (take, decode, record): 1.8-2.0 ms measured per
    # job for sim workers on the shared 2-vCPU VM with 8 nodes busy (bench/RESULTS.md, issue 16)
    job_overhead_s: float = 0.002

    def __post_init__(self) -> None:
        if self.policy not in SIM_POLICY_NAMES:
            raise SettingsError(f"unknown policy {self.policy!r}; choose one of: {', '.join(SIM_POLICY_NAMES)}")
        if not self.speeds or any(not (s > 0 and math.isfinite(s)) for s in self.speeds):
            raise SettingsError(f"speeds must be one or more positive numbers (got {self.speeds})")
        if not 0 < self.load < 1:
            raise SettingsError(f"load must be in (0, 1), or queues grow without bound (got {self.load})")
        if self.jobs < 1:
            raise SettingsError(f"jobs must be at least 1 (got {self.jobs})")
        if self.service not in SERVICE_DISTRIBUTIONS:
            raise SettingsError(f"service must be one of {', '.join(SERVICE_DISTRIBUTIONS)} (got {self.service!r})")
        if self.stale < 0:
            raise SettingsError(f"stale must be >= 0 (got {self.stale})")
        if self.stale_model not in STALE_MODELS:
            raise SettingsError(f"stale_model must be one of {', '.join(STALE_MODELS)} (got {self.stale_model!r})")
        if min(self.job_s, self.snapshot_s, self.heartbeat_s) <= 0 or min(self.dispatch_latency_s,
                                                                           self.job_overhead_s) < 0:  # fmt: skip
            raise SettingsError("job_s, snapshot_s and heartbeat_s must be > 0, dispatch_latency_s and "
                                "job_overhead_s >= 0")  # fmt: skip
        if self.max_node_queue is not None and self.max_node_queue < 0:
            raise SettingsError(f"max_node_queue must be >= 0 (got {self.max_node_queue})")
        if (self.prefetch or 0) < 0 or self.affinity_keys < 0 or self.affinity_epsilon < 0:
            raise SettingsError("prefetch, affinity_keys and affinity_epsilon must be >= 0")
        if not 0 <= self.warmup < 1:
            raise SettingsError(f"warmup must be in [0, 1) (got {self.warmup})")

    @property
    def node_bound(self) -> int | str | None:
        """The most jobs a simulated node (one slot) holds: a number, None when unbounded, or
        "derived" under the loop model with no set prefetch (each node's from the latency and its
        service time, Router.prefetch_of). Elsewhere dispatch is instant: a derived prefetch is 0."""
        if self.policy == CENTRAL_QUEUE or self.max_node_queue == 0:
            return None
        if self.max_node_queue is not None:
            return self.max_node_queue
        if self.prefetch is None and self.stale_model == "loop":
            return "derived"
        return 1 + (self.prefetch or 0)
