"""The worker process: an rq SimpleWorker on its node's queue plus the heartbeat thread.

SimpleWorker runs jobs in this process (no fork per job), so a model loaded once stays warm
on the GPU; CUDA would not survive a fork anyway.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rq import Queue, SimpleWorker
from rq.job import Job, JobStatus

from dispatcher.connection import connect
from dispatcher.job import SERIALIZER, job_class
from dispatcher.keys import RQ_QUEUES, Keys
from dispatcher.settings import Settings

from . import context
from .gpu import make_probe
from .heartbeat import Heartbeat, NodeInfo
from .stats import NodeStats

log = logging.getLogger(__name__)

DEFAULT_ALLOW = ("worker.tasks",)


class NodeWorker(SimpleWorker):
    """A SimpleWorker that keeps the node's counters for its heartbeat."""

    def __init__(self, *args: Any, stats: NodeStats, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stats = stats

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.stats.job_started()
        started = time.perf_counter()
        ok = False
        try:
            super().execute_job(job, queue)
            ok = job.get_status(refresh=False) == JobStatus.FINISHED
        finally:
            self.stats.job_ended(time.perf_counter() - started, ok)


@dataclass(frozen=True)
class WorkerOptions:
    """How one node's worker runs (flags of `gpufleet worker`)."""

    node_id: str
    probe: str = "nvml"
    sim_speed: float = 1.0
    capacity: int = 1
    weight: float = 1.0
    allow: Sequence[str] = DEFAULT_ALLOW
    burst: bool = False  # exit once the node queue is empty (tests, one-shot runs)


def default_node_id() -> str:
    return socket.gethostname().split(".")[0]


def run_worker(settings: Settings, opts: WorkerOptions) -> None:
    """Serve the node queue until SIGINT/SIGTERM (rq's warm shutdown: the current job finishes)."""
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    cls = job_class(keys, tuple(opts.allow))
    queue = Queue(keys.node_queue(opts.node_id), connection=r, serializer=SERIALIZER, job_class=cls)
    r.sadd(RQ_QUEUES, queue.key)  # so `rq info` lists the node queue before its first job
    context.set_current(context.NodeContext(node_id=opts.node_id, sim_speed=opts.sim_speed))

    stats = NodeStats()
    probe = make_probe(opts.probe, lambda: stats.last_busy_fraction)
    info = NodeInfo(opts.node_id, capacity=opts.capacity, speed=opts.sim_speed, weight=opts.weight)
    heartbeat = Heartbeat(r, keys, info, stats, probe,
                          interval_s=settings.heartbeat_interval_s, ttl_s=settings.heartbeat_ttl_s)  # fmt: skip
    heartbeat.beat()  # alive before the first job can be routed here
    heartbeat.start()
    worker = NodeWorker(
        [queue],
        connection=r,
        serializer=SERIALIZER,
        job_class=cls,
        name=f"{opts.node_id}.{os.getpid()}.{secrets.token_hex(2)}",
        stats=stats,
    )
    log.info("worker started node=%s probe=%s speed=%g queue=%s", opts.node_id, probe.name, opts.sim_speed, queue.name)
    try:
        worker.work(burst=opts.burst, logging_level=logging.getLevelName(logging.getLogger("rq").getEffectiveLevel()))
    finally:
        heartbeat.stop()
        log.info("worker stopped node=%s", opts.node_id)
