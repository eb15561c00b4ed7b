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
STALE_MODELS = ("heartbeat", "bulletin")  # simulator.py's docstring: both harsher than the dispatcher


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
    prefetch: int = 2
    affinity_keys: int = 0
    affinity_epsilon: float = 0.25
    seed: int = 0
    warmup: float = 0.1  # share of the first jobs left out of the statistics
    inflight_accounting: bool = True  # bulletin only; False only to show the herding it prevents

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
        if self.max_node_queue is not None and self.max_node_queue < 0:
            raise SettingsError(f"max_node_queue must be >= 0 (got {self.max_node_queue})")
        if self.prefetch < 0 or self.affinity_keys < 0 or self.affinity_epsilon < 0:
            raise SettingsError("prefetch, affinity_keys and affinity_epsilon must be >= 0")
        if not 0 <= self.warmup < 1:
            raise SettingsError(f"warmup must be in [0, 1) (got {self.warmup})")
