"""Prometheus metrics from hand-built node states and node counters: no server, no HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpufleet.dispatcher.observe import metrics
from gpufleet.dispatcher.observe.metrics import DispatcherMetrics, FleetView, set_desired_nodes
from gpufleet.dispatcher.observe.status import gpu_figures
from gpufleet.worker.metrics import DURATION_BUCKETS_S, worker_registry
from gpufleet.worker.stats import NodeStats
from tests.conftest import node


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text.decode()) for s in family.samples}  # fmt: skip


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(autouse=True)
def no_desired() -> Iterator[None]:
    set_desired_nodes(None)
    yield
    set_desired_nodes(None)


def view_metrics(view: FleetView, clock: Clock) -> DispatcherMetrics:
    m = DispatcherMetrics("shortest-expected-delay", CollectorRegistry(), clock=clock)
    m.fleet.view = view
    return m


GPUS = json.dumps([{"index": 0, "name": "H200", "util": 0.9, "mem_used_gib": 70.5, "mem_total_gib": 141.0},
                   {"index": 1, "name": "H200", "util": 0.1, "mem_used_gib": 0.0, "mem_total_gib": 141.0}])


def test_fleet_gauges_follow_the_snapshot() -> None:
    """Given a GPU node, a CPU node, a draining and a dead node, the gauges say so."""
    clock = Clock()
    nodes = (node("gpu", queued=3, gpu_util=0.5, mem_util=0.25), node("cpu", queued=1, gpu_util=0.3, mem_util=0.6),
             node("drn", draining=True), node("old", alive=False, queued=2))  # fmt: skip
    gpus = {"gpu": gpu_figures(nodes[0], GPUS), "cpu": gpu_figures(nodes[1], None)}
    found = samples(view_metrics(FleetView(nodes, {"high": 4, "normal": 7}, gpus, at=clock.t), clock).exposition())

    assert [value(found, "gpufleet_ingress_jobs", priority=p) for p in ("high", "normal", "low")] == [4, 7, 0]
    assert value(found, "gpufleet_node_queue_jobs", node="gpu") == 3
    assert value(found, "gpufleet_node_queue_jobs", node="old") == 2
    assert value(found, "gpufleet_node_gpu_utilization_ratio", node="gpu", gpu="0") == 0.9
    assert value(found, "gpufleet_node_memory_utilization_ratio", node="gpu", gpu="0") == 0.5
    assert value(found, "gpufleet_node_gpu_utilization_ratio", node="gpu", gpu="1") == 0.1
    assert value(found, "gpufleet_node_gpu_utilization_ratio", node="cpu", gpu="all") == 0.3
    assert value(found, "gpufleet_node_memory_utilization_ratio", node="cpu", gpu="all") == 0.6
    assert not any(k[0].endswith("ratio") and ("node", "old") in k[1] for k in found)  # dead: no utilization
    states = {s: value(found, "gpufleet_nodes", state=s) for s in metrics.STATES}
    assert states == {"alive": 2, "dead": 1, "draining": 1, "ejected": 0, "unhealthy": 0}


def test_each_gpu_exports_temperature_power_and_health_where_it_reports_them() -> None:
    """An H200 with every sensor, a lost one, a MIG instance (no utilization, no sensors), as the
    heartbeat sends them; a CPU node has no per-GPU series beyond its gpu="all" utilization."""
    clock = Clock()
    raw = json.dumps([
        {"index": 0, "label": "0", "name": "H200", "util": 0.9, "mem_used_gib": 70.5, "mem_total_gib": 141.0,
         "temperature_c": 71, "power_w": 612.5, "power_limit_w": 700.0, "healthy": True, "problem": ""},
        {"index": 1, "label": "1", "name": "H200", "util": None, "mem_used_gib": 0.0, "mem_total_gib": 0.0,
         "temperature_c": None, "power_w": None, "power_limit_w": None, "healthy": False,
         "problem": "NVML error: GPU is lost"},
        {"index": 2, "label": "2:0", "name": "A100 MIG 1g.10gb", "util": None, "mem_used_gib": 2.5,
         "mem_total_gib": 10.0, "temperature_c": None, "power_w": None, "power_limit_w": None, "healthy": True,
         "problem": ""},
    ])  # fmt: skip
    nodes = (node("g"), node("cpu", gpu_util=0.3))
    gpus = {"g": gpu_figures(nodes[0], raw), "cpu": gpu_figures(nodes[1], None)}
    found = samples(view_metrics(FleetView(nodes, {}, gpus, at=clock.t), clock).exposition())

    assert value(found, "gpufleet_gpu_temperature_celsius", node="g", gpu="0") == 71
    assert value(found, "gpufleet_gpu_power_watts", node="g", gpu="0") == 612.5
    assert value(found, "gpufleet_gpu_power_limit_watts", node="g", gpu="0") == 700
    healthy = {gpu: value(found, "gpufleet_gpu_healthy", node="g", gpu=gpu) for gpu in ("0", "1", "2:0")}
    assert healthy == {"0": 1, "1": 0, "2:0": 1}
    assert value(found, "gpufleet_node_memory_utilization_ratio", node="g", gpu="2:0") == 0.25
    per_gpu = {(name, dict(labels).get("gpu")) for name, labels in found if ("node", "g") in labels}
    assert ("gpufleet_node_gpu_utilization_ratio", "2:0") not in per_gpu  # NVML does not measure a MIG instance
    assert ("gpufleet_gpu_temperature_celsius", "1") not in per_gpu  # a lost GPU reports no temperature
    assert not any(name.startswith("gpufleet_gpu_") and ("node", "cpu") in labels for name, labels in found)


def test_desired_nodes_is_absent_until_the_autoscaler_publishes_it() -> None:
    clock = Clock()
    m = view_metrics(FleetView(at=clock.t), clock)
    assert not any(k[0] == "gpufleet_desired_nodes" for k in samples(m.exposition()))
    set_desired_nodes(4)
    assert value(samples(m.exposition()), "gpufleet_desired_nodes") == 4


def test_a_stale_snapshot_is_not_exported() -> None:
    """A standby dispatcher (or one cut off from Redis) reports no fleet rather than a frozen one."""
    clock = Clock()
    m = view_metrics(FleetView((node("a"),), at=clock.t), clock)
    assert value(samples(m.exposition()), "gpufleet_nodes", state="alive") == 1
    clock.t += metrics.MAX_VIEW_AGE_S + 1
    assert not any(k[0] == "gpufleet_nodes" for k in samples(m.exposition()))


def test_a_garbled_gpu_list_falls_back_to_the_node_aggregates() -> None:
    n = node("a", gpu_util=0.4, mem_util=0.2)
    assert [(g.gpu, g.util, g.mem_util) for g in gpu_figures(n, "[{\"index\": 0}]")] == [("all", 0.4, 0.2)]
    assert [g.gpu for g in gpu_figures(n, "not json")] == ["all"]


def test_dispatched_counts_each_node_and_rounds_are_timed() -> None:
    m = DispatcherMetrics("round-robin", CollectorRegistry())
    m.observe_round(["a", "b", "a"], 0.002)
    m.observe_round(["b"], 0.004)
    found = samples(m.exposition())
    assert value(found, "gpufleet_jobs_dispatched_total", node="a", policy="round-robin") == 2
    assert value(found, "gpufleet_jobs_dispatched_total", node="b", policy="round-robin") == 2
    assert value(found, "gpufleet_dispatch_seconds_count") == 2
    assert value(found, "gpufleet_dispatch_seconds_bucket", le="0.0025") == 1


def test_worker_counts_and_duration_histogram_come_from_node_stats() -> None:
    """Jobs ended in any slot show up in the collector of the node's main process."""
    stats = NodeStats(slots=2, buckets=DURATION_BUCKETS_S)
    for duration_s, ok, slot in [(0.003, True, 0), (0.2, True, 1), (0.2, False, 0), (75.0, True, 1)]:
        stats.job_started(slot)
        stats.job_ended(duration_s, ok, slot)
    found = samples(generate_latest(worker_registry("n1", stats)))
    assert value(found, "gpufleet_jobs_finished_total", node="n1", status="finished") == 3
    assert value(found, "gpufleet_jobs_finished_total", node="n1", status="failed") == 1
    assert value(found, "gpufleet_job_duration_seconds_bucket", node="n1", le="0.005") == 1
    assert value(found, "gpufleet_job_duration_seconds_bucket", node="n1", le="0.25") == 3
    assert value(found, "gpufleet_job_duration_seconds_bucket", node="n1", le="60.0") == 3
    assert value(found, "gpufleet_job_duration_seconds_bucket", node="n1", le="+Inf") == 4
    assert value(found, "gpufleet_job_duration_seconds_count", node="n1") == 4
    assert value(found, "gpufleet_job_duration_seconds_sum", node="n1") == pytest.approx(75.403)


def test_reading_the_totals_leaves_the_heartbeat_busy_window_alone() -> None:
    t = [0.0]
    stats = NodeStats(slots=1, buckets=DURATION_BUCKETS_S, clock=lambda: t[0])
    stats.job_started()
    t[0] = 1.0
    stats.totals()
    assert stats.view().busy_fraction == 1.0
