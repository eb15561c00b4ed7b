"""The worker process: an rq SimpleWorker on its node's queue plus the heartbeat thread.

SimpleWorker runs jobs in this process (no fork per job), so a model loaded once stays warm
on the GPU; CUDA would not survive a fork anyway. `--capacity N` runs N slot processes on one
node; `--gpus` runs one node per GPU (or per group of GPUs), each a supervised child process.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import redis
from rq import Queue

from dispatcher.connection import connect
from dispatcher.health import requeue_node
from dispatcher.job import SERIALIZER, job_class
from dispatcher.keys import RQ_QUEUES, Keys
from dispatcher.scripts import Scripts
from dispatcher.settings import Settings

from . import context
from .gpu import GpuDevice, discover_gpus, make_probe
from .gpu_nodes import cuda_visible_devices, gpu_node_id, group_gpus, select_gpus
from .heartbeat import Heartbeat, NodeInfo
from .metrics import DURATION_BUCKETS_S, serve_worker_metrics
from .node_worker import STOP_DRAIN_MARK, NodeWorker
from .stats import NodeStats
from .supervisor import MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S, Child, supervise

log = logging.getLogger(__name__)

DEFAULT_ALLOW = ("worker.tasks",)


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
    metrics_port: int = 0  # serve Prometheus metrics on this port; 0: off
    devices: tuple[GpuDevice, ...] | None = None  # the GPUs this node owns; None: all NVML sees


def default_node_id() -> str:
    return socket.gethostname().split(".")[0]


def run_worker(settings: Settings, opts: WorkerOptions) -> None:
    """Serve the node queue until SIGINT/SIGTERM (rq's warm shutdown: running jobs finish).

    A node of capacity N runs N job slots: this process alone when N is 1, else N child
    processes on the same node queue, restarted if they die; one heartbeat speaks for all.
    """
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    r.sadd(RQ_QUEUES, Keys.rq_queue(keys.node_queue(opts.node_id)))  # `rq info` lists it before its first job
    stats = NodeStats(slots=opts.capacity, buckets=DURATION_BUCKETS_S)
    if opts.metrics_port:  # from this process: the slots share `stats`, so it sees all of them
        serve_worker_metrics(opts.metrics_port, opts.node_id, stats)
    probe = make_probe(opts.probe, lambda: stats.last_busy_fraction, devices=opts.devices)
    info = NodeInfo(opts.node_id, capacity=opts.capacity, speed=opts.sim_speed, weight=opts.weight)
    heartbeat = Heartbeat(r, keys, info, stats, probe,
                          interval_s=settings.heartbeat_interval_s, ttl_s=settings.heartbeat_ttl_s)  # fmt: skip
    heartbeat.beat()  # alive before the first job can be routed here
    heartbeat.start()
    log.info("worker started node=%s probe=%s speed=%g capacity=%d", opts.node_id, probe.name, opts.sim_speed,
             opts.capacity)  # fmt: skip
    try:
        if opts.capacity == 1:
            work_slot(settings, opts, stats, 0)
        else:
            supervise_slots(settings, opts, stats)
    finally:
        heartbeat.stop()  # liveness gone: the dispatcher hands back whatever is still queued here
        drain_flag = keys.drain_flag(opts.node_id)
        if r.get(drain_flag) == STOP_DRAIN_MARK.encode():
            r.delete(drain_flag)
        log.info("worker stopped node=%s", opts.node_id)


def run_gpu_nodes(settings: Settings, opts: WorkerOptions, gpus: str, gpus_per_node: int = 1) -> None:
    """One node per GPU (or per `gpus_per_node` GPUs) named `<node_id>-gpu<N>`, each a child
    process pinned with CUDA_VISIBLE_DEVICES and restarted if it dies; a dead child's jobs are
    handed back at once, as the dispatcher does for any dead node."""
    groups = group_gpus(select_gpus(gpus, discover_gpus()), gpus_per_node)
    level = logging.getLogger().getEffectiveLevel()
    children = []
    for i, group in enumerate(groups):
        node_opts = replace(opts, node_id=gpu_node_id(opts.node_id, group), devices=group,
                            metrics_port=opts.metrics_port + i if opts.metrics_port else 0)  # fmt: skip
        children.append(Child(node_opts.node_id, _serve_node, (settings, node_opts, level),
                              env=(("CUDA_VISIBLE_DEVICES", cuda_visible_devices(group)),)))  # fmt: skip
    log.info("gpu nodes starting nodes=%s", ",".join(c.name for c in children))
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)

    def hand_back(child: Child) -> None:
        try:
            r.delete(keys.alive(child.name))  # routing stops now, not when the TTL runs out
            report = requeue_node(r, keys, Scripts(r, keys), settings, child.name, include_running=True)
            log.warning("node process died, its jobs handed back node=%s requeued=%d retried=%d failed=%d",
                        child.name, report.requeued, report.retried, report.failed)  # fmt: skip
        except redis.RedisError as e:  # the dispatcher does it once the liveness key expires
            log.error("could not hand back a dead node's jobs node=%s error=%s", child.name, e)

    supervise(children, burst=opts.burst, on_death=hand_back)


def _serve_node(settings: Settings, opts: WorkerOptions, log_level: int) -> None:
    """The body of one GPU node's process."""
    _configure_logging(log_level)
    run_worker(settings, opts)


def _configure_logging(level: int) -> None:
    """A spawned process starts with logging unconfigured: the parent's level and format."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(max(level, logging.WARNING))


def work_slot(settings: Settings, opts: WorkerOptions, stats: NodeStats, slot: int, log_level: int | None = None) -> None:
    """One job slot: an rq SimpleWorker on the node queue (the body of each slot process)."""
    if log_level is not None:
        _configure_logging(log_level)
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    cls = job_class(keys, tuple(opts.allow))
    queue = Queue(keys.node_queue(opts.node_id), connection=r, serializer=SERIALIZER, job_class=cls)
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    gpus = tuple(g for g in pinned.split(",") if g)
    context.set_current(context.NodeContext(node_id=opts.node_id, sim_speed=opts.sim_speed, gpus=gpus))
    backoff_s = RESTART_BACKOFF_S
    while True:
        worker = NodeWorker([queue], connection=r, serializer=SERIALIZER, job_class=cls, stats=stats, slot=slot,
                            node_id=opts.node_id, settings=settings,
                            name=f"{opts.node_id}.{slot}.{os.getpid()}.{secrets.token_hex(2)}")  # fmt: skip
        try:
            worker.work(burst=opts.burst,
                        logging_level=logging.getLevelName(logging.getLogger("rq").getEffectiveLevel()))  # fmt: skip
        except redis.RedisError as e:  # rq's teardown talks to Redis too
            log.error("worker loop broke on a redis error node=%s error=%s", opts.node_id, e)
        if worker.stop_requested or (opts.burst and not worker.unfinished_job_ids):
            return
        # rq's loop ends on an error it cannot handle (Redis gone while a job's outcome was being
        # written): wait for Redis, give back the job it was running, start over.
        log.warning("worker loop ended, restarting node=%s slot=%d in=%.1fs", opts.node_id, slot, backoff_s)
        time.sleep(backoff_s)
        backoff_s = min(MAX_RESTART_BACKOFF_S, backoff_s * 2)
        try:
            r.ping()
            if worker.unfinished_job_ids:
                requeue_node(r, keys, Scripts(r, keys), settings, opts.node_id, include_running=True,
                             only=worker.unfinished_job_ids)  # fmt: skip
            backoff_s = RESTART_BACKOFF_S
        except redis.RedisError:
            continue


def supervise_slots(settings: Settings, opts: WorkerOptions, stats: NodeStats) -> None:
    """Run `capacity` slot processes on the node queue; restart one that dies until stopped."""
    r = connect(settings.redis_url)
    level = logging.getLogger().getEffectiveLevel()
    children = [Child(f"{opts.node_id}-slot{slot}", work_slot, (settings, opts, stats, slot, level))
                for slot in range(opts.capacity)]  # fmt: skip

    def drain() -> None:  # before the slots hear of it: nothing new is routed here meanwhile
        r.set(Keys(settings.namespace).drain_flag(opts.node_id), STOP_DRAIN_MARK, nx=True)

    supervise(children, burst=opts.burst, on_stop=drain)
