"""The worker: one node process (heartbeat, claim of the node id, supervision) and its job slots.

The node process claims its node id as a new incarnation (dispatcher/node_claim.py), gives back
what an earlier process of that id left, sends the heartbeat, runs the stopper (stopper.py:
jobs asked to stop) and supervises `capacity` slot processes, each an rq SimpleWorker on the
node queue; one that recycles itself (recycle.py) is replaced at once. SimpleWorker runs jobs
in its own process (no fork per job), so a model loaded once stays warm on the GPU; CUDA would
not survive a fork anyway. Jobs never run in the node process, so a job that holds the GIL
cannot stop the heartbeat. `--gpus` runs one node process per GPU (or per group of GPUs) under
a supervisor.

Every process here rides out Redis going away (a restart, an outage of any length, a
failover): it waits with backoff, logs one line per outage, and starts over where it stood.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from redis import Redis
from rq import Queue

from gpufleet.dispatcher.errors import NodeIdInUse, NodeTakenOver
from gpufleet.dispatcher.fleet.health import Leftovers, RequeueReport, recover_node, requeue_node
from gpufleet.dispatcher.fleet.node_claim import claim_node_id, holder_name, new_incarnation, stop_mark, worker_name
from gpufleet.dispatcher.routing.models import OPENAI, PYTHON
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import REDIS_DOWN, connect
from gpufleet.dispatcher.store.job import SERIALIZER, job_class
from gpufleet.dispatcher.store.keys import RQ_QUEUES, Keys
from gpufleet.dispatcher.store.scripts import Scripts, Taker

from . import context
from .gpu import GpuDevice, discover_gpus, make_probe
from .gpu_nodes import cuda_visible_devices, gpu_node_id, gpu_url, group_gpus, select_gpus
from .heartbeat import Heartbeat, NodeInfo
from .metrics import DURATION_BUCKETS_S, serve_worker_metrics
from .node_worker import NodeWorker
from .recycle import EXIT_RECYCLE, NO_LIMITS, RecycleLimits, rss_mib
from .stats import NodeStats
from .stopper import Stopper
from .supervisor import MAX_RESTART_BACKOFF_S, RESTART_BACKOFF_S, Child, supervise

if TYPE_CHECKING:  # the forwarder's modules need httpx, which only the `openai` extra installs
    from .forwarder.server import OpenAIServer, ServerWatch

log = logging.getLogger(__name__)

DEFAULT_ALLOW = ("gpufleet.worker.tasks",)
DEFAULT_CONCURRENCY = 64  # a forwarder's requests in flight (worker --concurrency)
T = TypeVar("T")
EXIT_TAKEN_OVER = 3  # another process runs this node id: stop, and do not restart


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
    openai: OpenAIServer | None = None  # a forwarder: the server its requests go to (worker --openai-url)
    concurrency: int = DEFAULT_CONCURRENCY  # a forwarder: requests in flight at once (its capacity)
    recycle: RecycleLimits = NO_LIMITS  # when a slot process makes way for a fresh one (--max-jobs, --max-memory-mib)

    @property
    def slots(self) -> int:
        """Slot processes: `capacity` of them, or one for a forwarder (its requests share a loop)."""
        return 1 if self.openai else self.capacity

    @property
    def holds(self) -> int:
        """Jobs the node holds at once, as its heartbeat says: one per slot, or per request."""
        return self.concurrency if self.openai else self.capacity


def default_node_id() -> str:
    return socket.gethostname().split(".")[0]


def run_worker(settings: Settings, opts: WorkerOptions) -> None:
    """Run the node until SIGINT/SIGTERM (each slot's running job finishes first): claim the
    node id, give back what an earlier process of it left, then heartbeat and supervise the
    slots. NodeIdInUse when a live process runs the id; NodeTakenOver if one takes it over."""
    r = connect(settings.redis_url)  # an unreachable Redis at the start is a message: a wrong URL, most likely
    keys = Keys(settings.namespace)
    scripts = Scripts(r, keys)
    incarnation = new_incarnation()
    report = _once_redis_answers(opts.node_id, lambda: _claim(r, keys, scripts, settings, opts.node_id, incarnation))
    if report != RequeueReport():
        log.warning("an earlier process of this node left jobs, handed back node=%s requeued=%d retried=%d "
                    "failed=%d", opts.node_id, report.requeued, report.retried, report.failed)  # fmt: skip
    stats = NodeStats(slots=opts.holds, buckets=DURATION_BUCKETS_S)
    if opts.metrics_port:  # from this process: the slots share `stats`, so it sees all of them
        serve_worker_metrics(opts.metrics_port, opts.node_id, stats)
    probe = make_probe(opts.probe, lambda: stats.last_busy_fraction, devices=opts.devices)
    info = NodeInfo(opts.node_id, capacity=opts.holds, speed=opts.sim_speed, weight=opts.weight,
                    incarnation=incarnation, backend=OPENAI if opts.openai else PYTHON)  # fmt: skip
    server = _watch(opts.openai, settings.heartbeat_interval_s) if opts.openai else None
    heartbeat = Heartbeat(scripts, info, stats, probe, interval_s=settings.heartbeat_interval_s,
                          ttl_s=settings.heartbeat_ttl_s, on_taken_over=lambda: os.kill(os.getpid(), signal.SIGTERM),
                          server=server)  # fmt: skip
    if not _once_redis_answers(opts.node_id, heartbeat.beat):  # alive before the first job can be routed here
        raise NodeTakenOver(opts.node_id)
    heartbeat.start()
    slot_pids: dict[int, int] = {}  # slot -> its process now (supervise_slots keeps it)
    stopper = Stopper(connect(settings.redis_url, check=False), keys, opts.node_id, incarnation,
                      grace_s=settings.stop_grace_s, slot_pids=lambda: set(slot_pids.values()))  # fmt: skip
    stopper.start()
    log.info("worker started node=%s incarnation=%s probe=%s speed=%g capacity=%d%s", opts.node_id, incarnation,
             probe.name, opts.sim_speed, opts.holds,
             f" openai={opts.openai.base_url}" if opts.openai else "")  # fmt: skip
    try:
        final = supervise_slots(settings, opts, stats, incarnation, slot_pids)
    finally:
        stopper.stop()
        heartbeat.stop()
        if server:
            server.stop()
        try:  # liveness gone: the dispatcher hands back whatever is still queued here
            scripts.release_node(keys.alive(opts.node_id), keys.drain_flag(opts.node_id), incarnation,
                                 stop_mark(incarnation))  # fmt: skip
        except REDIS_DOWN as e:
            log.warning("could not release the node, its liveness expires by itself node=%s error=%s", opts.node_id, e)
    if heartbeat.taken_over or final == EXIT_TAKEN_OVER:
        raise NodeTakenOver(opts.node_id)
    log.info("worker stopped node=%s", opts.node_id)


def _claim(r: Redis, keys: Keys, scripts: Scripts, settings: Settings, node_id: str, incarnation: str) -> RequeueReport:
    """Claim the node id, give back what earlier processes of it left, and list its queue for
    `rq info` before its first job."""
    claim_node_id(r, keys, scripts, node_id, incarnation, ttl_s=settings.heartbeat_ttl_s)
    report = recover_node(r, keys, scripts, settings, node_id)
    r.sadd(RQ_QUEUES, Keys.rq_queue(keys.node_queue(node_id)))
    return report


def _once_redis_answers(node_id: str, step: Callable[[], T]) -> T:
    """`step()`, tried again with backoff while Redis is away (one log line for the outage):
    a worker starting as Redis restarts waits for it rather than exiting."""
    backoff_s, down = RESTART_BACKOFF_S, False
    while True:
        try:
            return step()
        except REDIS_DOWN as e:
            if not down:
                log.error("redis unreachable, the worker waits to start node=%s error=%s", node_id, e)
                down = True
            time.sleep(backoff_s)
            backoff_s = min(MAX_RESTART_BACKOFF_S, backoff_s * 2)


def supervise_slots(settings: Settings, opts: WorkerOptions, stats: NodeStats, incarnation: str,
                    slot_pids: dict[int, int]) -> int | None:  # fmt: skip
    """Run `capacity` slot processes on the node queue; one that dies has its jobs handed back
    (running ones retried) and is restarted, until stopped; one that recycles itself is replaced
    at once. `slot_pids` follows each slot's process. Returns EXIT_TAKEN_OVER if a slot found
    the node taken over."""
    r = connect(settings.redis_url, check=False)
    keys = Keys(settings.namespace)
    scripts = Scripts(r, keys)
    level = logging.getLogger().getEffectiveLevel()
    slots = {f"{opts.node_id}-slot{slot}": slot for slot in range(opts.slots)}
    children = [Child(name, work_slot, (settings, opts, stats, slot, incarnation, level))
                for name, slot in slots.items()]  # fmt: skip

    def drain() -> None:  # before the slots hear of it: nothing new is routed here meanwhile
        with suppress(*REDIS_DOWN):
            r.set(keys.drain_flag(opts.node_id), stop_mark(incarnation), nx=True)

    def hand_back(child: Child, pid: int) -> None:
        scope = Leftovers.of_holder(keys, opts.node_id, holder_name(incarnation, slots[child.name]))
        try:
            report = requeue_node(r, keys, scripts, settings, opts.node_id, scope)
        except REDIS_DOWN as e:  # the slot gives back what it held itself when it starts again
            log.error("could not hand back a dead slot's jobs node=%s slot=%s error=%s", opts.node_id, child.name, e)
            return
        log.warning("slot process died, its jobs handed back node=%s slot=%s requeued=%d retried=%d failed=%d "
                    "stopped=%d", opts.node_id, child.name, report.requeued, report.retried, report.failed,
                    report.stopped)  # fmt: skip

    def started(child: Child, pid: int) -> None:
        slot_pids[slots[child.name]] = pid

    return supervise(children, burst=opts.burst, on_stop=drain, on_death=hand_back, on_start=started,
                     final_codes=(EXIT_TAKEN_OVER,), restart_codes=(EXIT_RECYCLE,))  # fmt: skip


def work_slot(settings: Settings, opts: WorkerOptions, stats: NodeStats, slot: int, incarnation: str,
              log_level: int) -> None:  # fmt: skip
    """One job slot: an rq SimpleWorker on the node queue, started over whenever its loop ends
    on a Redis failure. Each start first gives back what this slot held before (a job taken,
    or started and never recorded), so nothing it had is stranded by the outage."""
    _configure_logging(log_level)
    r = connect(settings.redis_url, check=False)
    keys = Keys(settings.namespace)
    scripts = Scripts(r, keys)
    cls = job_class(keys, tuple(opts.allow))
    queue = Queue(keys.node_queue(opts.node_id), connection=r, serializer=SERIALIZER, job_class=cls)
    holder = holder_name(incarnation, slot)
    taker = Taker.of(keys, opts.node_id, holder, incarnation)
    mine = Leftovers.of_holder(keys, opts.node_id, holder)
    pinned = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    context.set_current(context.NodeContext(node_id=opts.node_id, sim_speed=opts.sim_speed,
                                            gpus=tuple(g for g in pinned.split(",") if g)))  # fmt: skip
    rq_level = logging.getLevelName(logging.getLogger("rq").getEffectiveLevel())
    backoff_s, down = RESTART_BACKOFF_S, False
    while True:
        lost: Exception | None = None
        try:
            report = requeue_node(r, keys, scripts, settings, opts.node_id, mine)
            r.sadd(keys.held_lists(opts.node_id), taker.held)
            if down:
                log.info("redis reachable again, slot starts over node=%s slot=%d handed_back=%d", opts.node_id,
                         slot, report.requeued + report.retried + report.failed)  # fmt: skip
                down, backoff_s = False, RESTART_BACKOFF_S
            worker = _slot_worker(opts, [queue], connection=r, serializer=SERIALIZER, job_class=cls, stats=stats,
                                  slot=slot, node_id=opts.node_id, settings=settings, taker=taker,
                                  name=worker_name(opts.node_id, holder))  # fmt: skip
            worker.work(burst=opts.burst, logging_level=rq_level)
            lost = worker.redis_lost
        except REDIS_DOWN as e:
            lost = e
        else:
            if worker.taken_over:
                sys.exit(EXIT_TAKEN_OVER)
            if worker.recycle_reason:  # the next process of this slot gives back whatever this one still held
                log.info("slot process recycled, a fresh one takes over node=%s slot=%d reason=%s jobs=%d rss_mib=%.0f",
                         opts.node_id, slot, worker.recycle_reason, worker.jobs_run, rss_mib())  # fmt: skip
                stats.recycled(worker.recycle_reason)
                sys.exit(EXIT_RECYCLE)
            if lost is None and (worker.stop_requested or opts.burst):
                return
        if lost is not None and not down:
            log.error("redis unreachable, slot waits and starts over node=%s slot=%d error=%s",
                      opts.node_id, slot, lost)  # fmt: skip
            down = True
        elif lost is None:  # rq's loop ended on something it could not handle: it logged it
            log.warning("worker loop ended, restarting node=%s slot=%d in=%.1fs", opts.node_id, slot, backoff_s)
        time.sleep(backoff_s)
        backoff_s = min(MAX_RESTART_BACKOFF_S, backoff_s * 2)


def _slot_worker(opts: WorkerOptions, *args: Any, **kwargs: Any) -> NodeWorker:
    """A slot's rq worker: a forwarder when the node forwards to an OpenAI server."""
    if opts.openai is None:
        return NodeWorker(*args, recycle=opts.recycle, **kwargs)
    from .forwarder.loop import ForwarderWorker  # needs httpx: the `openai` extra

    return ForwarderWorker(*args, server=opts.openai, concurrency=opts.concurrency, **kwargs)


def _watch(server: OpenAIServer, interval_s: float) -> ServerWatch:
    """The forwarder's server, watched for the heartbeat from now on."""
    from .forwarder.server import ServerWatch

    watch = ServerWatch(server, interval_s)
    watch.start()
    return watch


def run_gpu_nodes(settings: Settings, opts: WorkerOptions, gpus: str, gpus_per_node: int = 1) -> None:
    """One node per GPU (or per `gpus_per_node` GPUs) named `<node_id>-gpu<N>`, each a child
    process pinned with CUDA_VISIBLE_DEVICES and restarted if it dies; a dead child's jobs are
    handed back at once, as the dispatcher does for any dead node."""
    groups = group_gpus(select_gpus(gpus, discover_gpus()), gpus_per_node)
    level = logging.getLogger().getEffectiveLevel()
    children = []
    for i, group in enumerate(groups):
        server = opts.openai and replace(opts.openai, base_url=gpu_url(opts.openai.base_url, group))
        node_opts = replace(opts, node_id=gpu_node_id(opts.node_id, group), devices=group,
                            metrics_port=opts.metrics_port + i if opts.metrics_port else 0, openai=server)  # fmt: skip
        children.append(Child(node_opts.node_id, _serve_node, (settings, node_opts, level),
                              env=(("CUDA_VISIBLE_DEVICES", cuda_visible_devices(group)),)))  # fmt: skip
    log.info("gpu nodes starting nodes=%s", ",".join(c.name for c in children))
    r = connect(settings.redis_url)
    keys = Keys(settings.namespace)
    scripts = Scripts(r, keys)

    def hand_back(child: Child, pid: int) -> None:
        try:
            beat = r.hmget(keys.heartbeat(child.name), "incarnation", "pid")
            incarnation = (beat[0] or b"").decode()
            if incarnation and (beat[1] or b"").decode() == str(pid):  # the dead child's, not a successor's
                scripts.release_node(keys.alive(child.name), keys.drain_flag(child.name), incarnation,
                                     stop_mark(incarnation))  # routing stops now, not when the TTL runs out
            report = requeue_node(r, keys, scripts, settings, child.name, Leftovers(queued=True))
            log.warning("node process died, its jobs handed back node=%s requeued=%d retried=%d failed=%d",
                        child.name, report.requeued, report.retried, report.failed)  # fmt: skip
        except REDIS_DOWN as e:  # the dispatcher does it once the liveness key expires
            log.error("could not hand back a dead node's jobs node=%s error=%s", child.name, e)

    supervise(children, burst=opts.burst, on_death=hand_back, done_codes=(EXIT_TAKEN_OVER,))


def _serve_node(settings: Settings, opts: WorkerOptions, log_level: int) -> None:
    """The body of one GPU node's process."""
    _configure_logging(log_level)
    try:
        run_worker(settings, opts)
    except (NodeIdInUse, NodeTakenOver) as e:  # another process runs this node id: say so, do not restart
        log.error("%s", e)
        sys.exit(EXIT_TAKEN_OVER)


def _configure_logging(level: int) -> None:
    """A spawned process starts with logging unconfigured: the parent's level and format."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("rq").setLevel(max(level, logging.WARNING))
