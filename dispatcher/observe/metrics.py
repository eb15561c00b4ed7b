"""The dispatcher's Prometheus metrics: every name, help text and label it exports, in one place.

Served by `gpufleet dispatcher --metrics-port PORT` with prometheus-client's HTTP server.

Fleet gauges are not kept in prometheus-client Gauges. Each snapshot refresh stores one
immutable `FleetView` (a reference swap), and `FleetCollector` turns the latest view into
metric families when Prometheus scrapes. So a scrape never touches Redis, and a node that
leaves the fleet leaves no stale series behind. The counter and the histogram are
prometheus-client's own. A view older than `MAX_VIEW_AGE_S` is not exported at all: a standby
dispatcher (no lease, no snapshots) or one cut off from Redis must not report an empty or
frozen fleet that would set off or hide alerts. Names are a contract: alert rules and
dashboards in deploy/ use them.
"""

from __future__ import annotations

import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from redis import Redis

from ..errors import SettingsError
from ..fleet.tenants import TenantUsage, read_waiting
from ..routing.models import NodeState
from ..settings import FORGET_DEAD_AFTER_S
from ..store.keys import PRIORITIES, Keys
from .status import STATES, GpuFigure, gpu_figures, node_state_word, nodes_in_view, state_counts

MAX_VIEW_AGE_S = 5.0  # fleet gauges older than this are left out (the loop refreshes every ~0.15 s)
DISPATCH_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)

# Per-GPU gauges, labelled node and gpu: (name, help, the figure). A GPU that does not report a
# figure (None: no sensor, a MIG instance, a node without a GPU list) has no series for it.
GPU_GAUGES: tuple[tuple[str, str, Callable[[GpuFigure], float | None]], ...] = (
    ("gpufleet_gpu_temperature_celsius", "GPU temperature (degrees C) from the node's last heartbeat.",
     lambda g: g.temperature_c),
    ("gpufleet_gpu_power_watts", "GPU power draw (W) from the node's last heartbeat.", lambda g: g.power_w),
    ("gpufleet_gpu_power_limit_watts", "GPU enforced power limit (W) from the node's last heartbeat.",
     lambda g: g.power_limit_w),
    ("gpufleet_gpu_healthy", "1 if NVML reports no error on the GPU (lost, uncorrected ECC, critical Xid), else 0.",
     lambda g: None if g.healthy is None else float(g.healthy)),
)  # fmt: skip


@dataclass(frozen=True)
class FleetView:
    """What the latest snapshot refresh saw."""

    nodes: tuple[NodeState, ...] = ()
    ingress: Mapping[str, int] = field(default_factory=dict)  # priority -> jobs waiting
    gpus: Mapping[str, tuple[GpuFigure, ...]] = field(default_factory=dict)  # node id -> figures
    tenants: tuple[TenantUsage, ...] = ()
    at: float = float("-inf")  # time.monotonic() of the refresh; -inf: none yet


def fleet_families(view: FleetView | None, desired_nodes: int | None) -> Iterator[Metric]:
    """The fleet gauges for one view (pure); with no view, only the desired node count."""
    if view is None:
        yield from _desired_family(desired_nodes)
        return
    ingress = GaugeMetricFamily("gpufleet_ingress_jobs", "Jobs waiting to be routed at each priority (in its "
                                "ingress queue and its tenants' lanes).", labels=["priority"])  # fmt: skip
    for priority in PRIORITIES:
        ingress.add_metric([priority], view.ingress.get(priority, 0))
    yield ingress
    yield from _tenant_families(view.tenants)

    queued = GaugeMetricFamily("gpufleet_node_queue_jobs",
                               "Jobs routed to a node and waiting in its queue (not running yet).", labels=["node"])
    for n in view.nodes:
        queued.add_metric([n.node_id], n.queued)
    yield queued

    util = GaugeMetricFamily("gpufleet_node_gpu_utilization_ratio",
                             "GPU utilization (0-1) from the node's last heartbeat; gpu=\"all\": the node "
                             "reports no per-GPU figures. Dead nodes and MIG instances (NVML does not measure "
                             "them) are left out.",
                             labels=["node", "gpu"])  # fmt: skip
    mem = GaugeMetricFamily("gpufleet_node_memory_utilization_ratio",
                            "GPU memory used / total (0-1) from the node's last heartbeat; gpu=\"all\": the node "
                            "reports no per-GPU figures. Dead nodes are left out.", labels=["node", "gpu"])  # fmt: skip
    per_gpu = [(GaugeMetricFamily(name, help_text, labels=["node", "gpu"]), figure)
               for name, help_text, figure in GPU_GAUGES]  # fmt: skip
    for n in view.nodes:
        if not n.alive:
            continue
        for g in view.gpus.get(n.node_id) or gpu_figures(n, None):
            if g.util is not None:  # None: a MIG instance
                util.add_metric([n.node_id, g.gpu], g.util)
            mem.add_metric([n.node_id, g.gpu], g.mem_util)
            for family, figure in per_gpu:
                if (x := figure(g)) is not None:
                    family.add_metric([n.node_id, g.gpu], x)
    yield util
    yield mem
    for family, _ in per_gpu:
        yield family

    states = state_counts(node_state_word(n) for n in view.nodes)
    nodes = GaugeMetricFamily("gpufleet_nodes", "Nodes in the fleet's view (as `gpufleet status`), by state.",
                              labels=["state"])  # fmt: skip
    for state in STATES:  # every one is exported, 0 included
        nodes.add_metric([state], states[state])
    yield nodes

    yield from _desired_family(desired_nodes)


def _tenant_families(tenants: Sequence[TenantUsage]) -> Iterator[Metric]:
    waiting = GaugeMetricFamily("gpufleet_tenant_waiting_jobs", "A tenant's jobs waiting in its lanes, not yet "
                                "taken for routing.", labels=["tenant"])  # fmt: skip
    flight = GaugeMetricFamily("gpufleet_tenant_in_flight_jobs", "A tenant's jobs taken for routing and not ended "
                               "(in an ingress, queued on a node, or running): what max_running caps.",
                               labels=["tenant"])  # fmt: skip
    weight = GaugeMetricFamily("gpufleet_tenant_weight", "A tenant's share of freed slots.", labels=["tenant"])
    cap = GaugeMetricFamily("gpufleet_tenant_max_running_jobs", "A tenant's quota of jobs in flight; absent: none.",
                            labels=["tenant"])  # fmt: skip
    for t in tenants:
        waiting.add_metric([t.tenant], t.waiting)
        flight.add_metric([t.tenant], t.in_flight)
        weight.add_metric([t.tenant], t.settings.weight)
        if t.settings.max_running is not None:
            cap.add_metric([t.tenant], t.settings.max_running)
    yield from (waiting, flight, weight, cap)


def _desired_family(desired_nodes: int | None) -> Iterator[Metric]:
    if desired_nodes is not None:
        yield GaugeMetricFamily("gpufleet_desired_nodes",
                                "Node count the autoscaler wants; absent until the autoscaler publishes one.",
                                value=desired_nodes)  # fmt: skip


_desired_nodes: int | None = None


def set_desired_nodes(n: int | None) -> None:
    """Publish the autoscaler's desired node count as `gpufleet_desired_nodes` (None: absent again).

    Process-wide, so the autoscaler need not hold the metrics object; a no-op in effect when
    metrics are off.
    """
    global _desired_nodes
    _desired_nodes = n


class FleetCollector:
    """Exports the latest FleetView at scrape time (a prometheus-client custom collector)."""

    def __init__(self, *, max_age_s: float = MAX_VIEW_AGE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.view = FleetView()
        self._max_age_s, self._clock = max_age_s, clock

    def collect(self) -> Iterable[Metric]:
        view = self.view if self._clock() - self.view.at <= self._max_age_s else None
        return list(fleet_families(view, _desired_nodes))


class DispatcherMetrics:
    """The dispatcher's metrics, on their own registry (so tests can make several)."""

    def __init__(self, policy: str, registry: CollectorRegistry | None = None, *,
                 clock: Callable[[], float] = time.monotonic, forget_dead_after_s: float = FORGET_DEAD_AFTER_S,
                 ) -> None:  # fmt: skip
        self.policy = policy
        self.forget_dead_after_s = forget_dead_after_s  # nodes dead this long are left out, as status does
        self.registry = registry if registry is not None else CollectorRegistry()
        self._clock = clock
        self.fleet = FleetCollector(clock=clock)
        self.registry.register(self.fleet)
        self.dispatched = Counter("gpufleet_jobs_dispatched", "Jobs moved from the ingress to a node's queue.",
                                  ["node", "policy"], registry=self.registry)  # fmt: skip
        self.dispatch_seconds = Histogram("gpufleet_dispatch_seconds",
                                          "Time of one routing round that moved jobs: reading the ingress heads, "
                                          "routing them and the atomic moves (snapshot refresh not included).",
                                          buckets=DISPATCH_BUCKETS_S, registry=self.registry)  # fmt: skip

    def observe_fleet(self, r: Redis, keys: Keys, nodes: Sequence[NodeState]) -> None:
        """After a snapshot refresh: one extra round trip (the jobs waiting, the tenants); per-GPU
        figures come from the heartbeats the snapshot already read. Nodes out of view (dead too
        long) are left out."""
        nodes = nodes_in_view(nodes, self.forget_dead_after_s)
        waiting, tenants = read_waiting(r, keys)
        depths = {priority: w.total for priority, w in waiting.items()}
        gpus = {n.node_id: gpu_figures(n, n.gpus_json) for n in nodes if n.alive}
        self.fleet.view = FleetView(tuple(nodes), depths, gpus, tuple(tenants), self._clock())

    def observe_round(self, node_ids: Iterable[str], seconds: float) -> None:
        """A routing round moved one job to each of `node_ids` (repeats allowed) in `seconds`."""
        for node_id, n in Tally(node_ids).items():
            self.dispatched.labels(node=node_id, policy=self.policy).inc(n)
        self.dispatch_seconds.observe(seconds)

    def exposition(self) -> bytes:
        text: bytes = generate_latest(self.registry)
        return text


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0") -> threading.Thread:
    """Serve `registry` at http://addr:port/metrics from a daemon thread (prometheus-client's server)."""
    try:
        _, thread = start_http_server(port, addr, registry=registry)
        assert isinstance(thread, threading.Thread)
    except OSError as e:
        raise SettingsError(f"--metrics-port {port}: cannot listen on {addr}:{port}: {e.strerror or e}") from e
    return thread
