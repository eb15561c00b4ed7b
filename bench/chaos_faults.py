"""The fault suite's faults (bench/chaos.py): the fleet they hit, one scenario's run state, and
one injector per scenario. Each injector does its fault once and returns a line saying what
it did; a worker to kill or stop is one running a job, when one is:

  kill-worker-new-id   kill -9 a worker; start a replacement under a new node id
  kill-worker-same-id  kill -9 a worker; restart it at once under the same node id
                       (faults 1, 3, ... kill the worker's every process, its node process
                       and slots, as a host crash would; faults 2, 4, ... its node process
                       alone, and its slots get the parent-death signal)
  kill-dispatcher      kill -9 the dispatcher holding the lease (a standby takes over);
                       start a new standby
  kill-slot            a worker with --capacity 3: kill -9 one of its slot processes (the
                       children of the node process; the supervisor restarts it)
  redis-restart-term   SIGTERM redis-server, start it again on the same port and AOF
  redis-restart-kill   kill -9 redis-server, start it again on the same port and AOF
  sigstop-worker       SIGSTOP a worker for 2.5x the liveness TTL, then SIGCONT (every
                       process of it, then its node process alone, by turns)
  bad-payloads         push garbage onto the ingress and a node queue: ids with no job
                       HASH, rq jobs pickled (rq's default serializer), a HASH whose `data`
                       is raw bytes, and JSON that is not a call
  sentinel-failover    kill -9 the Sentinel master, wait for the failover, restart the old
                       master (dispatcher.redis_server.SentinelGroup)
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import zlib
from collections import defaultdict
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis import Redis
from rq.job import Job
from rq.utils import now, utcformat

from gpufleet.dispatcher.client.submit import new_job_ids
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.keys import RQ_QUEUES, Keys
from gpufleet.worker.fleet import LocalFleet, SimNode

NS = "chaos"
KEYS = Keys(NS)
ALLOW = ("--allow", "gpufleet.worker.chaos_tasks")
TTL_S = 1.0
POLL_S = 0.05


def retry(fn: Callable[[], Any], timeout_s: float) -> Any:
    """`fn()`, retried while Redis is down, for up to `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except REDIS_DOWN:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def wait_for(predicate: Callable[[], Any], timeout_s: float) -> Any:
    """Poll `predicate` until it is truthy or `timeout_s` passes; its last value either way
    (tests/integration/support.wait_until raises instead, and bench/ does not import tests/)."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            return value
        time.sleep(POLL_S)
    return value


# --- the fleet ------------------------------------------------------------------------------------


@dataclass
class ChaosFleet(LocalFleet):
    """LocalFleet (each process's stderr in <log_dir>/<name>.log) with dispatchers logging at
    INFO (their lease token says which one is active), and kill -9 / SIGSTOP by process tree."""

    stopped: dict[str, list[int]] = field(default_factory=dict)  # name -> pids under SIGSTOP now
    seen_pids: dict[int, str] = field(default_factory=dict)  # pid -> start time, of descendants seen

    def start_dispatcher(self, *extra: str, name: str = "dispatcher") -> subprocess.Popen[bytes]:
        quiet, self.log_level = self.log_level, "INFO"
        try:
            return super().start_dispatcher(*extra, name=name)
        finally:
            self.log_level = quiet

    @property
    def workers(self) -> list[str]:
        return [n for n in self.procs if not n.startswith("d")]

    @property
    def dispatchers(self) -> list[str]:
        return [n for n in self.procs if n.startswith("d")]

    def pids(self, name: str, tree: bool) -> list[int]:
        """The process `name`, and with `tree` its descendants (slot processes) after it."""
        pid = self.procs[name].pid
        return [pid, *descendants(pid)] if tree else [pid]

    def kill9(self, name: str, tree: bool) -> list[int]:
        """SIGKILL `name` (with `tree`, its slot processes too, as a crash of its host would), reap
        it and forget it; the pids killed."""
        self.remember_descendants()
        pids = self.pids(name, tree)
        for pid in reversed(pids):  # children first: the node process gets no moment to react
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.procs.pop(name).wait()
        self.stopped.pop(name, None)
        return pids

    def pause(self, name: str, tree: bool) -> list[int]:
        """SIGSTOP `name` (with `tree`, its slot processes too); the pids stopped."""
        pids = self.pids(name, tree)
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.stopped[name] = pids
        return pids

    def resume(self, name: str) -> None:
        for pid in self.stopped.pop(name, []):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def remember_descendants(self) -> None:
        for p in self.procs.values():
            for pid in descendants(p.pid):
                self.seen_pids.setdefault(pid, start_time(pid))

    def shutdown(self) -> None:
        """SIGCONT whatever is stopped, SIGTERM all (SIGKILL after the grace), then SIGKILL any
        descendant (slot process) still running, matched by pid and start time."""
        self.remember_descendants()
        for name in list(self.stopped):
            self.resume(name)
        self.stop()
        for pid, started in self.seen_pids.items():
            if start_time(pid) == started:
                with suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


# The /proc readers below are bench's own, not tests/integration/support.process_tree (bench/
# does not import tests/): one scan of /proc/*/stat gives the whole parent map, which both
# descendants() and slot_pids() (direct children, filtered by command line and state) read, and
# needs no CONFIG_PROC_CHILDREN; start_time() lets shutdown() SIGKILL a slot process it saw
# earlier without hitting a reused pid.


def ppid_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = defaultdict(list)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children[int(fields[1])].append(int(stat.parent.name))
    return children


def descendants(pid: int) -> list[int]:
    children, found, todo = ppid_map(), [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except OSError:
        return ""


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def slot_pids(pid: int) -> list[int]:
    """The slot processes of a --capacity worker: its multiprocessing-spawned children, not
    multiprocessing's resource tracker; zombies left out."""
    out = []
    for c in ppid_map().get(pid, []):
        line = cmdline(c)
        if b"spawn_main" in line and b"resource_tracker" not in line:
            try:
                state = Path(f"/proc/{c}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state != "Z":
                out.append(c)
    return out


# --- one scenario's run -----------------------------------------------------------------------


@dataclass
class Options:
    jobs: int
    faults: int
    seed: int
    timeout_s: float
    stall_s: float
    settle_s: float
    cost_max_s: float
    strict: bool
    keep: bool = False


@dataclass
class Trial:
    """Everything one scenario's run has: its Redis, fleet, batch, faults and findings."""

    name: str
    opts: Options
    rng: random.Random
    tmp: str
    server: Any = None  # RedisServer, or a SentinelGroup
    url: str = ""
    r: Redis = None  # type: ignore[assignment]
    fleet: ChaosFleet = None  # type: ignore[assignment]
    batch: str = ""
    job_ids: list[str] = field(default_factory=list)  # index i -> job id
    garbage: dict[str, str] = field(default_factory=dict)  # job id -> what kind, where
    faults: list[str] = field(default_factory=list)
    capacity: dict[str, int] = field(default_factory=dict)  # worker name -> --capacity
    redis_version: str = ""
    ttl_s: float = TTL_S  # the fleet's liveness TTL
    later: list[tuple[float, Callable[[], None]]] = field(default_factory=list)  # (when, what): a fault's second half
    next_id: int = 0  # the last worker id number used (w<N>)
    next_dispatcher: int = 0  # the last dispatcher number used (d<N>)

    def run_due(self) -> None:
        """Run the deferred halves of faults whose time has come."""
        for item in sorted(self.later, key=lambda x: x[0]):
            if item[0] <= time.monotonic():
                self.later.remove(item)
                item[1]()

    @property
    def chaos_log(self) -> Path:
        return Path(self.tmp, "executions.log")

    @property
    def log_dir(self) -> Path:
        """The fleet's LocalFleet.log_dir: one stderr file per process name, every incarnation's."""
        return Path(self.tmp, "logs")

    def start_worker(self, node_id: str, capacity: int = 1) -> None:
        self.fleet.start_worker(SimNode(node_id, capacity=capacity), *ALLOW)
        self.capacity[node_id] = capacity

    def new_node_id(self) -> str:
        self.next_id += 1
        return f"w{self.next_id}"

    def fsync_master(self) -> None:
        """appendfsync always on a Sentinel group's master, so an acknowledged write survives a
        kill -9: SentinelGroup starts its servers without it (a plain RedisServer gets it as
        `args`, kept across restarts)."""
        retry(lambda: self.r.config_set("appendfsync", "always"), 10)


# --- faults -------------------------------------------------------------------------------------


def active_dispatcher(t: Trial) -> str | None:
    """The dispatcher whose lease token is in Redis (each logs its token at INFO)."""
    holder = retry(lambda: t.r.get(KEYS.dispatcher_lease), 10)
    if not holder:
        return None
    token = f"token={holder.decode()}"
    for name in t.fleet.dispatchers:
        if token in Path(t.log_dir, f"{name}.log").read_text(errors="replace"):
            return name
    return None


def busy_worker(t: Trial) -> tuple[str, str]:
    """A worker running a job right now (in its started registry), else any worker; and
    "mid-job" or "idle", as seen just before the fault."""
    candidates = [name for name in t.fleet.workers if name not in t.fleet.stopped]
    with t.r.pipeline(transaction=False) as p:
        for name in candidates:
            p.zcard(Keys.rq_started(KEYS.node_queue(name)))
        running = p.execute()
    busy = [name for name, n in zip(candidates, running) if n]
    return t.rng.choice(busy or candidates), "mid-job" if busy else "idle"


def whole_tree(t: Trial) -> bool:
    """Faults 1, 3, ... hit a worker's every process (node process and slots, as a host crash or
    a frozen container would); faults 2, 4, ... its node process alone (its slots live on)."""
    return len(t.faults) % 2 == 0


def what_was_hit(victim: str, pids: list[int], tree: bool) -> str:
    return f"{victim} ({len(pids)} processes)" if tree else f"{victim}'s node process only (pid {pids[0]})"


def kill_worker_new_id(t: Trial) -> str:
    victim, doing = busy_worker(t)
    tree = whole_tree(t)
    pids = t.fleet.kill9(victim, tree)
    replacement = t.new_node_id()
    t.start_worker(replacement)
    return f"kill -9 {what_was_hit(victim, pids, tree)}, {doing}; started {replacement}"


def kill_worker_same_id(t: Trial) -> str:
    victim, doing = busy_worker(t)
    tree = whole_tree(t)
    pids = t.fleet.kill9(victim, tree)
    t.start_worker(victim)
    return f"kill -9 {what_was_hit(victim, pids, tree)}, {doing}; restarted as {victim}"


def kill_dispatcher(t: Trial) -> str:
    active = wait_for(lambda: active_dispatcher(t), 10)
    if active is None:
        return "no dispatcher held the lease within 10 s: nothing killed"
    pid = t.fleet.kill9(active, tree=False)[0]
    t.next_dispatcher += 1
    standby = f"d{t.next_dispatcher}"
    t.fleet.start_dispatcher(name=standby)
    return f"kill -9 active {active} (pid {pid}), started standby {standby}"


def kill_slot(t: Trial) -> str:
    node = next(n for n, c in t.capacity.items() if c > 1 and n in t.fleet.procs)
    slots = wait_for(lambda: slot_pids(t.fleet.procs[node].pid), 10)
    if not slots:
        return f"{node} had no slot process within 10 s: nothing killed"
    t.fleet.remember_descendants()
    victim = t.rng.choice(slots)
    os.kill(victim, signal.SIGKILL)
    return f"kill -9 slot pid {victim} of {node} (slots {len(slots)})"


def redis_restart(t: Trial, sig: str) -> str:
    """The server comes back with the same port, data dir, AOF and `args` (--appendfsync always)."""
    down_s = t.rng.uniform(0.1, 1.0)
    if sig == "TERM":
        t.server.stop()
    else:
        t.server.kill()
    time.sleep(down_s)
    t.server.start()
    return f"SIG{sig} redis-server, down {down_s:.2f} s, started again (AOF)"


def sigstop_worker(t: Trial) -> str:
    """The SIGCONT comes later, from the wait loop, so the batch (and the next fault) go on."""
    victim, doing = busy_worker(t)
    tree = whole_tree(t)
    stop_s = 2.5 * t.ttl_s
    pids = t.fleet.pause(victim, tree)
    t.later.append((time.monotonic() + stop_s, lambda: t.fleet.resume(victim)))
    return f"SIGSTOP {what_was_hit(victim, pids, tree)}, {doing}, for {stop_s:.1f} s, then SIGCONT"


def bad_payloads(t: Trial) -> str:
    """Garbage on the ingress and on a live worker's node queue; none of it is in the batch."""
    node = t.rng.choice(t.fleet.workers)
    queues = {"ingress": KEYS.ingress_queue("normal"), f"node {node}": KEYS.node_queue(node)}
    ids = iter(new_job_ids(8))
    pushed = []
    for where, queue in queues.items():
        no_hash = next(ids)
        pushed.append((queue, no_hash, f"no HASH @ {where}"))
        pickled = next(ids)  # rq's default serializer: a worker must refuse it, never unpickle it
        job = Job.create("gpufleet.worker.chaos_tasks.record", args=({"i": -1},), connection=t.r, id=pickled,
                         origin=queue)  # fmt: skip
        job.save()
        t.r.hset(job.key, "status", "queued")
        pushed.append((queue, pickled, f"pickle @ {where}"))
    raw, not_a_call = next(ids), next(ids)
    stamp = utcformat(now())
    base: dict[str, str | bytes] = {"status": "queued", "created_at": stamp, "enqueued_at": stamp,
                                    "description": "garbage", "timeout": "30"}  # fmt: skip
    t.r.hset(Keys.rq_job(raw), mapping={**base, "data": b"\x80\x04garbage\xff\x00", "origin": queues[f"node {node}"]})
    pushed.append((queues[f"node {node}"], raw, f"raw bytes @ node {node}"))
    t.r.hset(Keys.rq_job(not_a_call), mapping={**base, "data": zlib.compress(b'{"not": "a call"}'),
                                                "origin": queues["ingress"]})  # fmt: skip
    pushed.append((queues["ingress"], not_a_call, "JSON, not a call @ ingress"))
    with t.r.pipeline() as p:
        for queue, job_id, kind in pushed:
            p.rpush(Keys.rq_queue(queue), job_id)
            p.sadd(RQ_QUEUES, Keys.rq_queue(queue))
            t.garbage[job_id] = kind
        p.execute()
    return f"pushed {len(pushed)} garbage ids (ingress and node {node})"


def sentinel_failover(t: Trial) -> str:
    old = t.server.kill_master()
    new = t.server.wait_for_failover(old)
    t.server.restart_killed()
    with suppress(*REDIS_DOWN):
        t.fsync_master()
    return f"kill -9 master :{old}, failover to :{new}, old master restarted"
