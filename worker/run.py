"""The worker process: an rq SimpleWorker on its node's queue plus the heartbeat thread.

SimpleWorker runs jobs in this process (no fork per job), so a model loaded once stays warm
on the GPU; CUDA would not survive a fork anyway.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
from rq import Queue

from dispatcher.connection import connect
from dispatcher.health import requeue_node
from dispatcher.job import SERIALIZER, job_class
from dispatcher.keys import RQ_QUEUES, Keys
from dispatcher.scripts import Scripts
from dispatcher.settings import Settings

from . import context
from .gpu import make_probe
from .heartbeat import Heartbeat, NodeInfo
from .metrics import DURATION_BUCKETS_S, serve_worker_metrics
from .node_worker import STOP_DRAIN_MARK, NodeWorker
from .stats import NodeStats

log = logging.getLogger(__name__)

DEFAULT_ALLOW = ("worker.tasks",)
RESTART_BACKOFF_S = 0.5
MAX_RESTART_BACKOFF_S = 30.0


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
    probe = make_probe(opts.probe, lambda: stats.last_busy_fraction)
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


def work_slot(settings: Settings, opts: WorkerOptions, stats: NodeStats, slot: int, log_level: int | None = None) -> None:
    """One job slot: an rq SimpleWorker on the node queue (the body of each slot process)."""
    if log_level is not None:  # a spawned slot process starts with logging unconfigured
        logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("rq").setLevel(max(log_level, logging.WARNING))
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    cls = job_class(keys, tuple(opts.allow))
    queue = Queue(keys.node_queue(opts.node_id), connection=r, serializer=SERIALIZER, job_class=cls)
    context.set_current(context.NodeContext(node_id=opts.node_id, sim_speed=opts.sim_speed))
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
        if worker.stop_requested or (opts.burst and worker.unfinished_job_id is None):
            return
        # rq's loop ends on an error it cannot handle (Redis gone while a job's outcome was being
        # written): wait for Redis, give back the job it was running, start over.
        log.warning("worker loop ended, restarting node=%s slot=%d in=%.1fs", opts.node_id, slot, backoff_s)
        time.sleep(backoff_s)
        backoff_s = min(MAX_RESTART_BACKOFF_S, backoff_s * 2)
        try:
            r.ping()
            if worker.unfinished_job_id:
                requeue_node(r, keys, Scripts(r, keys), settings, opts.node_id, include_running=True,
                             only={worker.unfinished_job_id})  # fmt: skip
            backoff_s = RESTART_BACKOFF_S
        except redis.RedisError:
            continue


def supervise_slots(settings: Settings, opts: WorkerOptions, stats: NodeStats) -> None:
    """Run `capacity` slot processes; restart one that dies (with backoff) until stopped."""
    mp = multiprocessing.get_context("spawn")
    r = connect(settings.redis_url)
    level = logging.getLogger().getEffectiveLevel()
    stopping = threading.Event()

    def start(slot: int) -> multiprocessing.process.BaseProcess:
        p = mp.Process(target=work_slot, args=(settings, opts, stats, slot, level), name=f"{opts.node_id}-slot{slot}")
        p.start()
        return p

    def forward(signum: int, frame: Any) -> None:
        r.set(Keys(settings.namespace).drain_flag(opts.node_id), STOP_DRAIN_MARK, nx=True)
        stopping.set()
        for p in procs.values():
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)

    procs = {slot: start(slot) for slot in range(opts.capacity)}
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    backoff_s = {slot: RESTART_BACKOFF_S for slot in procs}
    try:
        while procs:
            for slot, p in list(procs.items()):
                p.join(timeout=0.2)
                if p.is_alive():
                    continue
                if stopping.is_set() or (opts.burst and p.exitcode == 0):
                    del procs[slot]
                    continue
                log.warning("slot died, restarting node=%s slot=%d exitcode=%s in=%.1fs", opts.node_id, slot,
                            p.exitcode, backoff_s[slot])  # fmt: skip
                stopping.wait(backoff_s[slot])
                backoff_s[slot] = min(MAX_RESTART_BACKOFF_S, backoff_s[slot] * 2)
                if not stopping.is_set():
                    procs[slot] = start(slot)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
