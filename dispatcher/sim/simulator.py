"""The routing simulator behind `gpufleet simulate`: what a policy does to time in system.

A discrete-event simulation of one dispatcher in front of single-slot nodes of given
speeds, driving the SAME policy objects and Router as the real dispatcher. Jobs arrive
as a Poisson stream at `load` x the fleet's total service rate; a job's work is
exponential or lognormal with mean 1, and a node of speed s runs it in work / s. Time is
in mean service times of a speed-1 node. A run's settings live in `config`, its job stream
in `workload`, the fleet mechanics in `sim_fleet`; this module runs them and sums up.

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

- "loop" (loop_model.py; `stale` unused): the dispatcher loop as it runs now, in seconds: the
  dispatch latency on every submit and every end, a node re-read every snapshot interval, and
  service times as each node's EWMA of its real run times, sent once a heartbeat. The others
  dispatch instantly, so their derived prefetch is 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .config import CENTRAL_QUEUE, SERVICE_DISTRIBUTIONS, SIM_POLICY_NAMES, STALE_MODELS, SimConfig
from .loop_model import run_loop
from .sim_fleet import run_central_queue, run_routed
from .workload import make_workload

__all__ = [  # config's names too: `gpufleet simulate` and the bench import them from here
    "CENTRAL_QUEUE",
    "SERVICE_DISTRIBUTIONS",
    "SIM_POLICY_NAMES",
    "STALE_MODELS",
    "NodeReport",
    "SimConfig",
    "SimResult",
    "percentile",
    "simulate",
]


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


def percentile(sorted_values: list[float], q: float) -> float:
    """The nearest-rank q-quantile (0 < q <= 1) of an ascending list."""
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def simulate(cfg: SimConfig) -> SimResult:
    """Run `cfg` to the last job's completion; the same config gives the same result."""
    work = make_workload(cfg)
    routed = run_loop if cfg.stale_model == "loop" else run_routed
    run = run_central_queue if cfg.policy == CENTRAL_QUEUE else routed
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
