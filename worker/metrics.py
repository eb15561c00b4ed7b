"""A worker's Prometheus metrics: every name, help text and label it exports, in one place.

Served by `gpufleet worker --metrics-port PORT` from the worker's main process.

With `--capacity N` jobs run in N spawned slot processes, so the figures cannot live in one
process's prometheus-client objects. They are read, at scrape time, from the node's shared
`NodeStats` (shared memory every slot writes to, the same counters the heartbeat reports),
by a custom collector in the main process. That is why prometheus-client's multiprocess mode
is not used: it needs PROMETHEUS_MULTIPROC_DIR set before any import in every process, a
directory of per-pid files cleaned up when a slot dies or is restarted, and would keep a second
copy of numbers NodeStats already holds.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from gpufleet.dispatcher.observe.metrics import serve

from .recycle import REASONS
from .stats import NodeStats

# Inference jobs: from a few milliseconds (a small model, a warm cache) to a minute (a long generation).
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class NodeStatsCollector:
    """Exports one node's NodeStats at scrape time (a prometheus-client custom collector)."""

    def __init__(self, node_id: str, stats: NodeStats) -> None:
        if stats.buckets != DURATION_BUCKETS_S:
            raise ValueError("NodeStats must be made with buckets=DURATION_BUCKETS_S")
        self.node_id = node_id
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        t = self.stats.totals()
        finished = CounterMetricFamily("gpufleet_jobs_finished",
                                       "Job executions ended on this node: status=finished (returned) or failed "
                                       "(raised or timed out; a retried job counts once per attempt).",
                                       labels=["node", "status"])  # fmt: skip
        finished.add_metric([self.node_id, "finished"], t.completed)
        finished.add_metric([self.node_id, "failed"], t.failed)

        cumulative = list(itertools.accumulate(t.bucket_counts))
        bounds = [floatToGoString(b) for b in DURATION_BUCKETS_S] + ["+Inf"]  # le as prometheus-client writes it
        duration = HistogramMetricFamily("gpufleet_job_duration_seconds",
                                         "Run time of each job execution on this node, finished or failed.",
                                         labels=["node"])  # fmt: skip
        duration.add_metric([self.node_id], list(zip(bounds, cumulative)), t.duration_sum_s)

        recycles = CounterMetricFamily("gpufleet_worker_recycles",
                                       "Slot processes of this node replaced by fresh ones: reason=max_jobs (worker "
                                       "--max-jobs), max_memory (--max-memory-mib) or cuda_oom (a job ran out of CUDA "
                                       "memory).", labels=["node", "reason"])  # fmt: skip
        for reason, count in zip(REASONS, t.recycles):
            recycles.add_metric([self.node_id, reason], count)
        return [finished, duration, recycles]


def worker_registry(node_id: str, stats: NodeStats) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(NodeStatsCollector(node_id, stats))
    return registry


def serve_worker_metrics(port: int, node_id: str, stats: NodeStats) -> None:
    """Serve this node's metrics at http://0.0.0.0:port/metrics from a daemon thread."""
    serve(worker_registry(node_id, stats), port)
