"""The routing simulator behind `gpufleet simulate`: what a policy does to time in system.

A discrete-event simulation of one dispatcher in front of single-slot nodes of given
speeds, driving the SAME policy objects and Router as the real dispatcher. Jobs arrive
as a Poisson stream at `load` x the fleet's total service rate; a job's work is
exponential or lognormal with mean 1, and a node of speed s runs it in work / s. Time is
in mean service times of a speed-1 node. The fleet mechanics live in `sim_fleet`; this
module holds the settings, the workload and the summary.

Information model (`stale` = heartbeat period; `stale=0` is fresh information). Two
models, chosen by `stale_model`:

The dispatcher now reads both counts from Redis at every snapshot: queued (LLEN of the
node queue) and running (ZCARD of rq's started registry, `snapshot.read_nodes`), so with
converged service times it sees what `stale=0` models, whatever the heartbeat age. The two
stale models below are harsher cases, kept to show what old counts would cost:

- "heartbeat" (the default; how the dispatcher read nodes while `running` came from the
  heartbeat): a node's queued count (jobs
  waiting in its queue) is current at every routing decision, as `snapshot.read_nodes`
  reads each node queue's length (LLEN) from Redis on every snapshot, and `loop.Dispatcher`
  re-snapshots every `snapshot_interval_s` and whenever a job's end wakes it while jobs
  wait. Only the heartbeat's own fields are stale: `running` and utilization, as of the
  node's last beat. Each node beats every `stale` on its own phase, drawn at random, as
  real workers beat independently. The late-binding bound reads queued + heartbeat
  `running`, as the dispatcher's does. (A snapshot at most `snapshot_interval_s`, 150 ms,
  old plus what the dispatcher sent since is taken as current: short against a job.)
- "bulletin" (Mitzenmacher's bulletin board, "How useful is old information?", the harshest
  case for herding): the whole heartbeat, queued count included, is refreshed for every
  node together every `stale`, and the router adds its own count of what it sent since;
  only the late-binding bound reads the node's current job count.

A node's EWMA service time is taken as converged (1 / speed) in both, so its age does not
matter here.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from ..errors import SettingsError
from ..routing.policies import DEFAULT_POLICY, POLICY_NAMES

CENTRAL_QUEUE = "central-queue"
SIM_POLICY_NAMES = (*POLICY_NAMES, CENTRAL_QUEUE)
SERVICE_DISTRIBUTIONS = ("exp", "lognormal")
STALE_MODELS = ("heartbeat", "bulletin")  # see the module docstring: both are harsher than the dispatcher
LOGNORMAL_SIGMA = 1.0  # squared coefficient of variation e^1 - 1 ~ 1.72, against exp's 1


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


@dataclass(frozen=True)
class NodeReport:
    """One node's part of a run: its share of the jobs and the time it was busy."""

    node: str
    speed: float
    share: float
    utilization: float


@dataclass(frozen=True)
class SimResult:
    """Time in system (mean service times of a speed-1 node) and what each node did."""

    mean: float
    p50: float
    p95: float
    p99: float
    nodes: tuple[NodeReport, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, object]:
        """The `--json` shape: mean, p50, p95, p99 and nodes [{node, share, utilization}]."""
        return {
            "mean": self.mean,
            "p50": self.p50,
            "p95": self.p95,
            "p99": self.p99,
            "nodes": [{"node": n.node, "share": n.share, "utilization": n.utilization} for n in self.nodes],
        }


@dataclass(frozen=True)
class Workload:
    """Every job's arrival time, work (mean 1) and affinity key index (-1: none)."""

    arrivals: list[float]
    works: list[float]
    keys: list[int]


def make_workload(cfg: SimConfig) -> Workload:
    """The job stream for `cfg`. Arrivals, work and keys each have their own seeded stream,
    so every policy sees the very same jobs (common random numbers)."""
    rate = cfg.load * sum(cfg.speeds)
    arrival_rng, work_rng, key_rng = (random.Random(f"{cfg.seed}:{name}") for name in ("arrival", "work", "key"))
    arrivals, t = [], 0.0
    for _ in range(cfg.jobs):
        t += arrival_rng.expovariate(rate)
        arrivals.append(t)
    if cfg.service == "exp":
        works = [work_rng.expovariate(1.0) for _ in range(cfg.jobs)]
    else:
        mu = -LOGNORMAL_SIGMA**2 / 2  # mean exp(mu + sigma^2/2) = 1
        works = [work_rng.lognormvariate(mu, LOGNORMAL_SIGMA) for _ in range(cfg.jobs)]
    k = cfg.affinity_keys
    keys = [key_rng.randrange(k) for _ in range(cfg.jobs)] if k else [-1] * cfg.jobs
    return Workload(arrivals, works, keys)


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def simulate(cfg: SimConfig) -> SimResult:
    """Run `cfg` to the last job's completion; the same config gives the same result."""
    from .sim_fleet import run_central_queue, run_routed  # the fleet imports this module's types

    work = make_workload(cfg)
    run = run_central_queue if cfg.policy == CENTRAL_QUEUE else run_routed
    outcome = run(cfg, work)
    skip = int(cfg.warmup * cfg.jobs)
    times = sorted(outcome.time_in_system[skip:])
    span = max(outcome.makespan, 1e-12)
    nodes = tuple(
        NodeReport(node=node_id, speed=s, share=served / cfg.jobs, utilization=busy / span)
        for node_id, s, served, busy in zip(outcome.node_ids, cfg.speeds, outcome.served, outcome.busy_time)
    )
    return SimResult(
        mean=sum(times) / len(times),
        p50=percentile(times, 0.50),
        p95=percentile(times, 0.95),
        p99=percentile(times, 0.99),
        nodes=nodes,
    )
