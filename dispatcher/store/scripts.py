"""The Lua scripts in lua/, loaded once; one typed method per script (callers never see KEYS).

`register_script` runs EVALSHA and reloads a script Redis forgot (NOSCRIPT), as redis-py does.
Scripts that act on jobs found by a read (two-phase: read where jobs are, then move them
atomically) re-check each job's place inside the script, so a job that moved meanwhile is
skipped, never duplicated. Per-job results are MOVED (1), SKIPPED (0: no longer where it was
looked for) or DROPPED (-1: its id pointed at no job HASH, so it left its list and went
nowhere); MOVED == True and SKIPPED == False, so a list of them compares with booleans.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from typing import Any

from redis import Redis
from redis.client import Pipeline
from rq.utils import now, utcformat

from .events import CURSOR_FIELD, BatchField
from .job import BatchCounter
from .keys import RQ_QUEUES, JobField, Keys

_LUA = {f.name.removesuffix(".lua"): f.read_text(encoding="utf-8")
        for f in files(__package__).joinpath("lua").iterdir() if f.name.endswith(".lua")}  # fmt: skip
_INCLUDE = re.compile(r"^--@include (_\w+)$", re.MULTILINE)


def _source(text: str) -> str:
    """A script's source with each library it names ("--@include _name": lua/_name.lua) in
    place of that line: Redis scripts cannot call each other, so code two scripts share (the
    start of a job) lives once, in a library, and is put into each. Lines that are only a
    comment are left out, and so is indentation: the scripts a worker runs in a transaction go
    as EVAL with their source on every job, and their comments were three quarters of its
    bytes (redis-py sends a pipeline of over 6,000 bytes in more than one write)."""
    code = (line.strip() for line in _INCLUDE.sub(lambda m: _LUA[m.group(1)], text).splitlines())
    return "\n".join(line for line in code if line and not line.startswith("--")) + "\n"


_SOURCES = {name: _source(text) for name, text in _LUA.items() if not name.startswith("_")}


MAX_NODES_PER_MOVE = 65535  # move_to_nodes names a job's node in two bytes
MOVED, SKIPPED, DROPPED = 1, 0, -1  # per-job outcome of a move, return or end


@dataclass(frozen=True)
class JobPlace:
    """Where a job sits: a LIST holding its id, or a ZSET holding `member` (default: the id)."""

    job_id: str
    source: str
    batch_id: str = ""
    member: str = ""


@dataclass(frozen=True)
class Taker:
    """One worker process taking jobs from its node queue: the keys it takes through, and the
    incarnation token the node's liveness key must hold for it to take or start anything."""

    node_queue: str  # the rq queue *name*
    held: str  # its held LIST (keys.held)
    alive: str  # the node's liveness key (keys.alive)
    wakeup: str  # the node's wake-up LIST (keys.node_wakeup)
    token: str  # its incarnation

    @classmethod
    def of(cls, keys: Keys, node_id: str, holder: str, token: str) -> Taker:
        return cls(keys.node_queue(node_id), keys.held(node_id, holder), keys.alive(node_id),
                   keys.node_wakeup(node_id), token)  # fmt: skip


@dataclass(frozen=True)
class StartStamp:
    """What every job one worker starts together shares (see lua/_start_job.lua): the worker,
    the time (as rq formats it) and rq's job monitoring interval, from which each job's
    heartbeat TTL and registry scores follow, as rq's own start computes them; and where each
    start's job_started event goes."""

    worker: str  # the rq worker name
    at: datetime  # the start (rq.utils.now())
    monitoring_s: int  # rq's Worker.job_monitoring_interval
    node_id: str
    events: str  # the event stream (keys.events)
    events_max: int  # Settings.events_max

    def keys(self, node_queue: str) -> list[str]:
        """The keys start_stamp takes: the node queue's started registry, the worker's
        execution index, the worker, the event stream."""
        return [Keys.rq_started(node_queue), Keys.rq_worker_executions(self.worker), Keys.rq_worker(self.worker),
                self.events]  # fmt: skip

    def args(self) -> list[str]:
        """ARGV's 11 stamp values, in start_stamp's order."""
        return [self.worker, utcformat(self.at), repr(self.at.timestamp()), str(self.monitoring_s),
                JobField.ATTEMPTS, JobField.ERROR, Keys.RQ_EXECUTION_PREFIX, Keys.RQ_EXECUTIONS_PREFIX,
                self.node_id, str(self.events_max), JobField.BATCH]  # fmt: skip


@dataclass(frozen=True)
class JobStart:
    """Jobs one worker holds and starts together (start_jobs), each with its new execution id."""

    taker: Taker
    stamp: StartStamp
    jobs: Sequence[tuple[str, str]]  # (job id, new execution id)


@dataclass(frozen=True)
class TakeStart:
    """A take_job: the i-th job taken gets `execution_ids[i]`; at most that many are taken."""

    stamp: StartStamp
    execution_ids: Sequence[str]


@dataclass(frozen=True)
class Finish:
    """One success for finish_jobs: the job's run, and what rq's success path writes for it
    (times and scores as rq formats them; see lua/finish_jobs.lua)."""

    job_id: str
    execution_id: str
    ended_at: str  # rq.utils.utcformat
    ttl: str  # the result TTL: "" none, "-1" never expires, else seconds
    finished_score: str  # the finished registry's score; "" when rq would not add the job
    working_s: float  # started_at to ended_at, for the worker's total_working_time
    batch_id: str  # "" for a job of no batch
    result: Mapping[str, Any]  # rq's Result.serialize() of the success


@dataclass(frozen=True)
class Lane:
    """A batch's jobs of one priority that wait for their tenant's turn (keys.lane_queue)."""

    batch_id: str
    tenant: str


@dataclass(frozen=True)
class LaneTake:
    """Up to `count` jobs to take from the head of a lane into its ingress."""

    lane: Lane
    count: int


@dataclass(frozen=True)
class Feed:
    """What feed_ingress takes into one priority's ingress: `takes` in turn, then what they
    took short of `budget` from its other lanes."""

    priority: str
    takes: Sequence[LaneTake] = ()
    budget: int = 0


@dataclass(frozen=True)
class Fed:
    """What one Feed took: (taken, left in the lane) per take, (lane, taken, left) per other
    lane it took from (left: 0 for a lane found empty, -1 when not known), the jobs left in
    all its lanes (0 when not counted), and after it the ingress's length and its lanes
    (batch id -> tenant)."""

    planned: Sequence[tuple[int, int]]
    others: Sequence[tuple[Lane, int, int]]
    lanes_left: int
    ingress: int
    lanes: Mapping[str, str]


@dataclass(frozen=True)
class FeedReply:
    """A feed_ingress reply: priority -> Fed, the tenants HASH (raw) and their jobs in flight."""

    fed: Mapping[str, Fed]
    tenants: Mapping[bytes, bytes]
    flight: Mapping[str, int]

    @classmethod
    def of_reply(cls, priorities: Sequence[str], reply: Sequence[Any]) -> FeedReply:
        per_priority, tenants, flight = reply
        fed = {}
        for priority, (planned, others, lanes_left, ingress, lanes) in zip(priorities, per_priority):
            fed[priority] = Fed([(int(t), int(n)) for t, n in planned],
                                [(Lane(read_id(b), read_id(tenant)), int(t), int(n)) for b, tenant, t, n in others],
                                int(lanes_left), int(ingress),
                                {read_id(b): read_id(t) for b, t in zip(lanes[::2], lanes[1::2])})  # fmt: skip
        return cls(fed, dict(zip(tenants[::2], tenants[1::2])),
                   {read_id(t): int(n) for t, n in zip(flight[::2], flight[1::2])})  # fmt: skip


@dataclass(frozen=True)
class Ending:
    """A job to end for good, the registry (ZSET) to file it in, and why."""

    place: JobPlace
    registry: str
    reason: str


class FencedWrites:
    """Writes to apply in one apply_fenced call, in groups: each group only while its job's
    execution is still current (see apply_fenced.lua). rq's own methods queue their writes on
    `group(member)`, a pipeline that only collects them, so the writes stay exactly rq's."""

    def __init__(self, r: Redis) -> None:
        self._r = r
        self._groups: list[tuple[str, str, Pipeline]] = []

    def group(self, member: str = "", *, counted_batch: str = "") -> Pipeline:
        """A pipeline collecting the writes that depend on `member` ("": on nothing).
        `counted_batch`: the batch in whose outcome counters these writes count the job's end,
        checked for its own end once they are applied."""
        collector = self._r.pipeline(transaction=False)
        self._groups.append((member, counted_batch, collector))
        return collector

    def args(self) -> list[Any]:
        """The groups as apply_fenced's arguments (the collectors are emptied)."""
        flat: list[Any] = []
        for member, counted_batch, collector in self._groups:
            commands = [command for command, _options in collector.command_stack]
            flat += [member, counted_batch, len(commands)]
            for command in commands:
                flat += [len(command), *command]
            collector.reset()
        return flat


def as_raw(text: str) -> bytes:
    """A job id, or a key holding one, as Redis holds it: ids are read with surrogateescape
    (`read_id`), so one that is not UTF-8 (garbage a foreign writer pushed) goes back byte for
    byte and the script can find and remove it."""
    return text.encode("utf-8", "surrogateescape")


def read_id(raw: bytes) -> str:
    """A job id read from a list or registry (any bytes; see as_raw)."""
    return raw.decode("utf-8", "surrogateescape")


class Scripts:
    """Atomic multi-key moves between gpufleet's queues."""

    def __init__(self, r: Redis, keys: Keys) -> None:
        self._keys = keys
        self._run = {name: r.register_script(src) for name, src in _SOURCES.items()}

    def move_to_nodes(self, ingress_queue: str, moves: Sequence[tuple[str, str]]) -> list[int]:
        """Move (job id, node id) pairs out of `ingress_queue`; MOVED, SKIPPED or DROPPED per job."""
        if not moves:
            return []
        index: dict[str, int] = {}  # node id -> its 1-based place among the batch's nodes
        for _, node_id in moves:
            index.setdefault(node_id, len(index) + 1)
        if len(index) > MAX_NODES_PER_MOVE:
            raise ValueError(f"one move reaches at most {MAX_NODES_PER_MOVE} nodes, not {len(index)}")
        queues = [self._keys.node_queue(node_id) for node_id in index]
        keys = [Keys.rq_queue(ingress_queue), RQ_QUEUES, *map(Keys.rq_queue, queues),
                *map(self._keys.node_wakeup, index)]  # fmt: skip
        node_of_job = b"".join(index[node_id].to_bytes(2, "big") for _, node_id in moves)
        args: list[str | bytes] = [JobField.NODE, Keys.rq_job(""), node_of_job]
        for queue, node_id in zip(queues, index):
            args += [queue, node_id]
        args += [as_raw(job_id) for job_id, _ in moves]
        return [int(flag) for flag in self._run["move_to_nodes"](keys=keys, args=args)]

    def return_to_ingress(self, priority: str, places: Sequence[JobPlace], *, at_front: bool = True,
                          counter: str = "", lane: Lane | None = None) -> list[int]:  # fmt: skip
        """Put jobs back in the ingress of `priority` (in flight again), or with `lane` at the end
        of that batch's lane (to wait their tenant's turn), in the given order; MOVED, SKIPPED or
        DROPPED per job. `counter`: a batch counter to decrement for each (a failed job coming back)."""
        if not places:
            return []
        dest = self._keys.ingress_queue(priority) if lane is None else self._keys.lane_queue(priority, lane.batch_id)
        keys: list[str | bytes] = [Keys.rq_queue(dest), RQ_QUEUES, self._keys.tenant_flight, self._keys.lanes(priority)]
        args: list[str | bytes] = [dest, "1" if at_front else "0", JobField.NODE, JobField.FLIGHT, JobField.TENANT,
                                   *((lane.batch_id, lane.tenant) if lane else ("", ""))]  # fmt: skip
        for p in places:
            keys += [p.source, as_raw(Keys.rq_job(p.job_id)), self._keys.batch_info(p.batch_id)]
            args += [as_raw(p.job_id), as_raw(p.member or p.job_id), counter]
        return [int(flag) for flag in self._run["return_to_ingress"](keys=keys, args=args)]

    def feed_ingress(self, feeds: Sequence[Feed], *, count_left: bool = False,
                     pipeline: Pipeline | None = None) -> FeedReply | None:  # fmt: skip
        """Take jobs from the head of lanes onto the tail of their ingress, for each Feed (see
        feed_ingress.lua); with `count_left`, count what is left in all the lanes of each. The
        reply also holds what the next plan needs: each ingress's length and lanes, the tenants'
        settings and their jobs in flight. With a `pipeline`, queued there as EVAL with the
        source (as take_ended); its reply goes to FeedReply.of_reply."""
        keys = [RQ_QUEUES, self._keys.tenant_flight, self._keys.tenants]
        args: list[str | int] = [JobField.FLIGHT, Keys.rq_job(""), "1" if count_left else "0", len(feeds)]
        for f in feeds:
            keys += [Keys.rq_queue(self._keys.ingress_queue(f.priority)), self._keys.lanes(f.priority)]
            args += [self._keys.ingress_queue(f.priority), Keys.rq_queue(self._keys.lane_queue(f.priority, "")),
                     f.budget, len(f.takes)]  # fmt: skip
        for f in feeds:
            for t in f.takes:
                keys.append(Keys.rq_queue(self._keys.lane_queue(f.priority, t.lane.batch_id)))
                args += [t.lane.batch_id, t.lane.tenant, t.count]
        if pipeline is not None:
            pipeline.eval(_SOURCES["feed_ingress"], len(keys), *keys, *args)
            return None
        return FeedReply.of_reply([f.priority for f in feeds], self._run["feed_ingress"](keys=keys, args=args))

    def end_jobs(self, endings: Sequence[Ending], *, status: str, counter: str, ttl_s: int,
                 events_max: int) -> list[int]:  # fmt: skip
        """End jobs for good with `status` (failed, canceled), each with its event (the stream
        capped at `events_max`); MOVED (ended), SKIPPED or DROPPED per job."""
        if not endings:
            return []
        keys: list[str | bytes] = []
        args: list[str | bytes] = [status, counter, str(ttl_s), JobField.ERROR, utcformat(now()), JobField.FLIGHT,
                                   str(events_max)]  # fmt: skip
        for e in endings:
            keys += [e.place.source, as_raw(Keys.rq_job(e.place.job_id)), e.registry,
                     self._keys.batch_info(e.place.batch_id), self._keys.batch_ended(e.place.batch_id)]  # fmt: skip
            args += [as_raw(e.place.job_id), as_raw(e.place.member or e.place.job_id), e.reason, e.place.batch_id]
        keys += [self._keys.tenant_flight, self._keys.events]
        return [int(flag) for flag in self._run["end_jobs"](keys=keys, args=args)]

    def take_job(self, taker: Taker, start: TakeStart, pipeline: Pipeline | None = None) -> Any:
        """Take jobs from the head of the taker's node queue and start them (see take_job.lua), as
        many as `start` has execution ids. The reply is [[job id, [field, value, ...]], ...] (no
        fields: the id had no HASH and was dropped), [] when there is nothing to take, or None
        when the taker no longer holds the node. With a `pipeline` it is queued there (a worker
        recording a job takes its next one in the same transaction) as EVAL with the source, not
        EVALSHA: inside a transaction a script Redis forgot cannot be reloaded and retried
        (Redis caches the compiled body)."""
        keys = [Keys.rq_queue(taker.node_queue), taker.alive, taker.wakeup, *start.stamp.keys(taker.node_queue)]
        args = [Keys.rq_job(""), taker.token, *start.stamp.args(), *start.execution_ids]
        if pipeline is None:
            return self._run["take_job"](keys=keys, args=args)
        pipeline.eval(_SOURCES["take_job"], len(keys), *keys, *args)
        return None

    def claim_jobs(self, taker: Taker, job_ids: Sequence[bytes | str]) -> list[bool]:
        """Take these jobs out of the taker's node queue into its held list, while it holds the
        node (see claim_jobs.lua); True for each one claimed."""
        if not job_ids:
            return []
        keys = [Keys.rq_queue(taker.node_queue), taker.held, taker.alive]
        return [flag == 1 for flag in self._run["claim_jobs"](keys=keys, args=[taker.token, *job_ids])]

    def put_back_job(self, taker: Taker, job_id: bytes | str) -> bool:
        """A job taken but never started goes back to the head of the taker's node queue."""
        keys = [Keys.rq_queue(taker.node_queue), taker.held, taker.wakeup]
        return bool(self._run["put_back_job"](keys=keys, args=[job_id]) == 1)

    def put_back_started(self, taker: Taker, worker: str, job_id: str, execution_id: str) -> bool:
        """A job taken and started at once (take_job) that never ran goes back to the head of
        the taker's node queue, its start undone (see put_back_started.lua)."""
        queue = taker.node_queue
        keys: list[str | bytes] = [Keys.rq_queue(queue), Keys.rq_started(queue), Keys.rq_worker_executions(worker),
                                   as_raw(Keys.rq_job(job_id)), as_raw(Keys.rq_execution(job_id, execution_id)),
                                   as_raw(Keys.rq_executions(job_id)), taker.wakeup]  # fmt: skip
        args: list[str | bytes] = [as_raw(job_id), execution_id, JobField.ATTEMPTS]
        return bool(self._run["put_back_started"](keys=keys, args=args) == 1)

    def request_stop(self, node_id: str, members: Sequence[str], ttl_s: int) -> list[bool]:
        """Ask `node_id` to stop these runs ("job_id:execution_id"), each only while it is in the
        node queue's started registry (see request_stop.lua); True for each one asked."""
        if not members:
            return []
        keys = [Keys.rq_started(self._keys.node_queue(node_id)), self._keys.stop_requests(node_id),
                self._keys.stop_wakeup(node_id)]  # fmt: skip
        flags = self._run["request_stop"](keys=keys, args=[ttl_s, *(as_raw(m) for m in members)])
        return [flag == 1 for flag in flags]

    def apply_fenced(self, pipeline: Pipeline, node_id: str, writes: FencedWrites, *, events_max: int) -> None:
        """Queue on `pipeline` the writes, each group only while its member is in the started
        registry of `node_id`'s queue, counting the runs that ended for the dispatcher (see
        apply_fenced.lua; a batch that ends gets its event, the stream capped at `events_max`);
        the reply is 1 (applied) or 0 (late) per group. EVAL with the source, as take_job (it
        shares a transaction with take_job)."""
        keys = [Keys.rq_started(self._keys.node_queue(node_id)), self._keys.dispatch_ended, self._keys.tenant_flight,
                self._keys.events]  # fmt: skip
        pipeline.eval(_SOURCES["apply_fenced"], len(keys), *keys, node_id, Keys.rq_job(""), JobField.FLIGHT,
                      self._keys.batch_info(""), events_max, *writes.args())  # fmt: skip

    def finish_jobs(self, pipeline: Pipeline, node_id: str, worker: str, finishes: Sequence[Finish], *,
                    events_max: int) -> None:  # fmt: skip
        """Queue on `pipeline` the record of these successes of one run on `node_id` (see
        finish_jobs.lua), with their events (the stream capped at `events_max`); the reply is 1
        (recorded) or 0 (late) per job. EVAL with the source, as take_job (they share the
        recording transaction)."""
        queue = self._keys.node_queue(node_id)
        keys = [Keys.rq_started(queue), self._keys.dispatch_ended, Keys.rq_worker(worker),
                Keys.rq_worker_executions(worker), Keys.rq_finished(queue), self._keys.dispatch_wakeup,
                self._keys.tenant_flight, self._keys.events]  # fmt: skip
        args: list[Any] = [node_id, Keys.rq_job(""), Keys.RQ_RESULTS_PREFIX, Keys.RQ_EXECUTION_PREFIX,
                           Keys.RQ_EXECUTIONS_PREFIX, BatchCounter.FINISHED, JobField.FLIGHT, events_max]  # fmt: skip
        for f in finishes:
            batch = (self._keys.batch_info(f.batch_id), self._keys.batch_ended(f.batch_id)) if f.batch_id else ("", "")
            args += [f.job_id, f.execution_id, f.ended_at, f.ttl, f.finished_score, repr(f.working_s), *batch,
                     f.batch_id, len(f.result)]  # fmt: skip
            for field, value in f.result.items():
                args += [field, value]
        pipeline.eval(_SOURCES["finish_jobs"], len(keys), *keys, *args)

    def start_jobs(self, pipeline: Pipeline, start: JobStart) -> None:
        """Queue on `pipeline` the start of `start.jobs` (see start_jobs.lua); the reply is
        [owner, flag per job]. EVAL with the source, as take_job (the pipeline holds rq's
        worker bookkeeping too)."""
        t = start.taker
        keys = [t.held, t.alive, *start.stamp.keys(t.node_queue)]
        args = [t.token, *start.stamp.args()]
        for job_id, execution_id in start.jobs:
            keys.append(Keys.rq_job(job_id))
            args += [job_id, execution_id]
        pipeline.eval(_SOURCES["start_jobs"], len(keys), *keys, *args)

    def take_ended(self, pipeline: Pipeline) -> None:
        """Queue on `pipeline` the read and reset of the runs-ended counts (see take_ended.lua);
        the reply is [node id, count, ...]. EVAL with the source: a Script queued on a pipeline
        makes redis-py ask SCRIPT EXISTS first, a round trip of its own on every execute."""
        pipeline.eval(_SOURCES["take_ended"], 1, self._keys.dispatch_ended)

    def start_batch(self, batch_id: str, size: int, func: str, created_at: float, tenant: str) -> bool:
        """Claim `batch_id` with its size, creation time, function and tenant, unless a batch of that id
        exists (see start_batch.lua); whether it was claimed. The batch joins keys.batches,
        which lets `gpufleet top` list it, and its batch_submitted event is written."""
        keys = [self._keys.batch_info(batch_id), self._keys.batches, self._keys.events]
        args: list[str | int] = [BatchCounter.SIZE, size, repr(created_at), func, batch_id, tenant]
        return bool(self._run["start_batch"](keys=keys, args=args) == 1)

    def set_notify(self, batch_id: str, url: str) -> bool:
        """Give the batch the URL its summary is POSTed to when it ends, queueing the notification
        at once when the batch has ended and the notifier has read past its end (see
        set_notify.lua); False when there is no such batch."""
        keys = [self._keys.batch_info(batch_id), self._keys.notifications]
        args = [BatchField.NOTIFY_URL, url, BatchField.ENDED_EVENT, batch_id, CURSOR_FIELD]
        return bool(self._run["set_notify"](keys=keys, args=args) == 1)

    def note_batch_ends(self, cursor: str, ends: Sequence[tuple[str, str]]) -> int:
        """The notifier's step: of these (batch_ended event id, batch id), queue a notification
        for each batch with a notify URL, and move its cursor to `cursor`, in one step (see
        note_batch_ends.lua); how many were queued."""
        keys = [self._keys.notifications, *(self._keys.batch_info(batch_id) for _, batch_id in ends)]
        args = [CURSOR_FIELD, cursor, BatchField.NOTIFY_URL, *(item for end in ends for item in end)]
        return int(self._run["note_batch_ends"](keys=keys, args=args))

    def claim_node(self, alive: str, token: str, ttl_ms: int, expected: str = "") -> tuple[bool, str | None]:
        """Claim a node id for incarnation `token` (see claim_node.lua): (claimed, current holder)."""
        reply = self._run["claim_node"](keys=[alive], args=[token, ttl_ms, expected])
        holder = reply[1] if len(reply) > 1 and reply[1] else None
        return reply[0] == 1, None if holder is None else holder.decode()

    def beat(self, node_id: str, token: str, ttl_ms: int, fields: Mapping[str, str]) -> bool:
        """One heartbeat of incarnation `token` (see beat.lua): False when another process has
        taken the node over (nothing was written)."""
        keys = [self._keys.alive(node_id), self._keys.heartbeat(node_id), self._keys.nodes]
        flat = [item for pair in fields.items() for item in pair]
        return bool(self._run["beat"](keys=keys, args=[token, ttl_ms, node_id, *flat]) == 1)

    def release_node(self, alive: str, drain: str, token: str, stop_mark: str) -> int:
        """Drop this incarnation's liveness key and stop mark (see release_node.lua)."""
        return int(self._run["release_node"](keys=[alive, drain], args=[token, stop_mark]))

    def renew_lease(self, token: str, ttl_ms: int) -> bool:
        return bool(self._run["renew_lease"](keys=[self._keys.dispatcher_lease], args=[token, ttl_ms]) == 1)

    def release_lease(self, token: str) -> bool:
        return bool(self._run["release_lease"](keys=[self._keys.dispatcher_lease], args=[token]) == 1)
