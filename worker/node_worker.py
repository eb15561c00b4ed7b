"""NodeWorker: rq's SimpleWorker plus what a fleet node needs around each job.

- taking and starting: jobs leave the node queue only by token-checked scripts, never by a
  bare BLMOVE, so a process that was stopped or taken over cannot take what is no longer its
  node's. take_job takes a job and starts it in the same step (writing what rq's own start
  writes): a busy worker takes its next job in the transaction that records the last, so a
  job that runs alone costs one round trip; an idle worker waits on the node's wake-up list,
  which the dispatcher fills when it routes jobs here. The other jobs of a batch (@batched)
  move into this process's held list (keys.held, claim_jobs) and start_jobs starts only those
  still held (the proof they are still this process's);
- fencing: a result is written only if the job's execution is still in the started registry,
  that is, nobody handed the job back meanwhile (a node declared dead may finish a job that
  was already given to another node), checked in the same atomic step as the write
  (apply_fenced.lua);
- retries: a failed job with retries left waits out a backoff in the retry schedule, then
  the dispatcher returns it to the ingress, so it can run on any node;
- Redis outages: any Redis error on this path ends rq's loop quietly (RedisLost); run.work_slot
  waits for Redis, gives back what this process held, and starts over: one log line per outage;
- SIGINT/SIGTERM drain the node first (nothing new is routed here), then rq's warm shutdown
  lets the running job finish;
- stopping on request (cancel --running): rq's stop-execution command, sent by the node's
  stopper, raises JobStopped inside the running call (call_stop.py); the jobs asked to stop
  end canceled, fenced like any outcome;
- recycling (recycle.py): after the run that crosses --max-jobs or --max-memory-mib, or raised
  a CUDA OOM (the node ejected for a cool-down first), the record takes no next job and the
  loop ends: run.work_slot exits for a fresh process;
- lean bookkeeping: each run (a job, or a batch of a task marked @batched) is started and
  recorded in one or two round trips (job_run.py), not rq's ~20; rq's own worker heartbeat and
  state writes are skipped when they would change nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from uuid import uuid4

import redis
from redis.client import Pipeline
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import current_timestamp, now, utcformat
from rq.worker import WorkerStatus

from gpufleet.dispatcher.fleet.health import STOP_REASON
from gpufleet.dispatcher.fleet.node_claim import stop_mark
from gpufleet.dispatcher.fleet.retry import may_retry, retry_delay_s
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.events import EventKind, add_event, short_error
from gpufleet.dispatcher.store.job import BatchCounter, FleetJob, wake_dispatcher
from gpufleet.dispatcher.store.keys import JobField, Keys
from gpufleet.dispatcher.store.scripts import (
    FencedWrites,
    Finish,
    JobStart,
    Scripts,
    StartStamp,
    Taker,
    TakeStart,
    read_id,
)

from . import context
from .call_stop import CallStop
from .interrupts import RedisLost, TakenOver
from .job_run import JobRun
from .recycle import CUDA_OOM, NO_LIMITS, RecycleLimits, rss_mib
from .stats import NodeStats

log = logging.getLogger(__name__)

RQ_HEARTBEAT_EVERY_S = 1.0  # rq's worker-registry heartbeat (its TTL is minutes), at most this often
RQ_SUSPENSION_CHECK_EVERY_S = 1.0  # `rq suspend` is noticed within this long
IDLE_WAIT_S = 5.0  # an idle worker looks at its queue at least this often, woken or not
OOM_EJECTION = "cuda-oom"  # the ejected key's value (keys.ejected) while a CUDA OOM keeps the node out


class NodeWorker(SimpleWorker):
    """A SimpleWorker bound to one fleet node's queue, as one of its incarnation's processes."""

    def __init__(self, *args: Any, node_id: str, settings: Settings, stats: NodeStats, taker: Taker,
                 slot: int = 0, recycle: RecycleLimits = NO_LIMITS, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.node_id = node_id
        self.fleet_settings = settings
        self.keys = Keys(settings.namespace)
        self.stats = stats
        self.slot = slot
        self.taker = taker
        self.scripts = Scripts(self.connection, self.keys)
        self._rng = random.Random()
        self.stop_requested = False  # rq raises StopRequested when idle without keeping a flag
        self.redis_lost: Exception | None = None  # why the loop ended, when Redis failed under it
        self.taken_over = False
        self._rq_heartbeat_at = self._suspension_checked_at = float("-inf")
        self._models_reported = 0
        self._taken: tuple[Job, Execution] | None = None  # next job, taken and started with the last one recorded
        self._prestarted: dict[str, Execution] = {}  # jobs dequeued already started by their take: start() skips them
        self._found_empty = False  # the last record's take found the node queue empty: wait for a wake-up first
        self.call_stop = CallStop()  # the call running now, stopped when one of its runs is asked to stop
        self.recycle = recycle
        self.jobs_run = 0  # by this process (worker --max-jobs)
        self.recycle_reason: str | None = None  # why this process is to make way for a fresh one (recycle.py)

    # -- the loop -------------------------------------------------------------------------
    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return bool(super().work(*args, **kwargs))
        except RedisLost:  # raised by a guarded call in rq's start (set_state), outside its loop
            return False
        except REDIS_DOWN as e:  # rq's start (register_birth, subscribe) talks to Redis
            self.redis_lost = e
            return False
        finally:
            with self._outside_loop():
                self._put_back_taken()

    def teardown(self) -> None:
        """rq's goodbye (register_death, unsubscribe) is best effort: Redis may be gone or failing
        over (redis-py then sometimes reads a transaction's replies short); rq's worker key
        expires by itself, and the restart gives back what this process held."""
        try:
            super().teardown()
        except redis.RedisError as e:
            self.redis_lost = self.redis_lost or e

    @contextmanager
    def _outside_loop(self) -> Iterator[None]:
        """Redis may be gone while the loop winds down: leave what it could not write to the
        restart (run.work_slot gives back what this process held)."""
        try:
            yield
        except REDIS_DOWN as e:
            self.redis_lost = self.redis_lost or e

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        """A Redis failure inside rq's loop ends it quietly (RedisLost), never as a job failure."""
        try:
            yield
        except RedisLost:
            raise
        except REDIS_DOWN as e:
            self.redis_lost = e
            raise RedisLost(str(e)) from e

    def _pubsub_exception_handler(self, exc: Exception, pubsub: Any, pubsub_thread: Any) -> None:
        """rq's command channel (`rq` shutdown commands): while Redis is away it retries
        quietly; the loop logs the outage once."""
        if isinstance(exc, REDIS_DOWN):
            time.sleep(2.0)
            return
        super()._pubsub_exception_handler(exc, pubsub, pubsub_thread)

    def execute_job(self, job: Job, queue: Queue) -> None:
        with self._guarded():
            try:
                JobRun(self, queue, job).run()
            finally:
                warm = context.current().models  # a task may have loaded a model in this slot's process
                if len(warm) != self._models_reported:
                    self.stats.add_models(warm)
                    self._models_reported = len(warm)

    def run_maintenance_tasks(self) -> None:
        with self._guarded():
            super().run_maintenance_tasks()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:  # fmt: skip
        """The next job, already started: the one the last record took and started (no round
        trip), else the head of the node queue, taken and started in one step, waiting for one
        to be routed here unless in burst mode (timeout None)."""
        with self._guarded():
            if self._taken is None:
                self.set_state(WorkerStatus.IDLE)
                self._taken = self._take(wait=timeout is not None)
                if self._taken is None:
                    return None
            (job, execution), self._taken = self._taken, None
            self._prestarted[job.id] = execution
            job.redis_server_version = self.get_redis_server_version()
            self.heartbeat()
            return job, self.queues[0]

    def _take(self, *, wait: bool) -> tuple[Job, Execution] | None:
        """Take and start the node queue's head, waiting on the node's wake-up list while it is
        empty (unless not `wait`); None when empty and not waiting."""
        while True:
            taken = [] if self._found_empty and wait else self.take_started(1)
            self._found_empty = False  # a job routed here since leaves a token in the wake-up list
            if taken:
                return taken[0]
            if not wait or self._stop_requested:
                return None
            self.heartbeat()
            self.connection.blpop([self.taker.wakeup], timeout=IDLE_WAIT_S)

    def take_started(self, count: int) -> list[tuple[Job, Execution]]:
        """Up to `count` jobs from the node queue, taken and started in one step (one round trip)."""
        start = self._take_start(count)
        return self._started(self.scripts.take_job(self.taker, start), start)

    def _take_start(self, count: int) -> TakeStart:
        """A take-and-start of up to `count` jobs, stamped now, with fresh execution ids."""
        return TakeStart(self._stamp(), [uuid4().hex for _ in range(count)])

    def _stamp(self) -> StartStamp:
        return StartStamp(worker=self.name, at=now(), monitoring_s=self.job_monitoring_interval, node_id=self.node_id,
                          events=self.keys.events, events_max=self.fleet_settings.events_max)  # fmt: skip

    def _started(self, reply: Any, start: TakeStart) -> list[tuple[Job, Execution]]:
        """The jobs a take_job reply started, with their executions; one line for each id
        dropped for want of its HASH."""
        if reply is None:
            raise self._taken_over()
        started = []
        at = start.stamp.at
        for (job_id, fields), execution_id in zip(reply, start.execution_ids):
            if not fields:
                log.warning("job data missing, id dropped from the node queue node=%s job=%s", self.node_id,
                            read_id(job_id))  # fmt: skip
                continue
            job = self.job_class(read_id(job_id), connection=self.connection, serializer=self.serializer)
            job.restore(dict(zip(fields[::2], fields[1::2])))
            started.append((job, self._execution(job, execution_id, at)))
        if started:
            self._state = WorkerStatus.BUSY  # what start_job wrote
        return started

    def _execution(self, job: Job, execution_id: str, at: datetime) -> Execution:
        """The rq Execution that start_job wrote for `job`, and the job's fields as it left them."""
        execution = Execution(execution_id, job.id, self.connection, worker_name=self.name)
        execution.created_at = execution.last_heartbeat = at
        self.executions[execution.id] = execution
        job.worker_name, job.started_at, job.last_heartbeat, job._status = self.name, at, at, JobStatus.STARTED
        return execution

    def _taken_over(self) -> TakenOver:
        self.taken_over = True
        log.error("node taken over by another process, this one stops node=%s slot=%d", self.node_id, self.slot)
        return TakenOver(self.node_id)

    def _may_take_next(self) -> bool:
        return not (self.stop_requested or self._stop_requested or self.recycle_reason)

    def _put_back_taken(self) -> None:
        """A job taken and started with the last record but never run (the loop ended) goes back
        to the head of the node queue, its start undone."""
        if self._taken is not None:
            (job, execution), self._taken = self._taken, None
            self.executions.pop(execution.id, None)
            self.scripts.put_back_started(self.taker, self.name, job.id, execution.id)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """rq's worker heartbeat, which its loop sends around every job: at most once a second
        unless it rides in a pipeline or sets a job's TTL."""
        if pipeline is None and timeout is None:
            if time.monotonic() - self._rq_heartbeat_at < RQ_HEARTBEAT_EVERY_S:
                return
            self._rq_heartbeat_at = time.monotonic()
        with self._guarded():
            super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        """rq's `rq suspend` check, which its loop makes before every job: once a second."""
        if time.monotonic() - self._suspension_checked_at >= RQ_SUSPENSION_CHECK_EVERY_S:
            with self._guarded():
                super().check_for_suspension(burst)
            self._suspension_checked_at = time.monotonic()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """rq's worker state, written only when it changes (its loop sets idle twice per job)."""
        if pipeline is None and state == self.get_state():
            return
        with self._guarded():
            super().set_state(state, pipeline)

    def set_shutdown_requested_date(self) -> None:
        with self._outside_loop():  # called from the signal handler: never raise there
            super().set_shutdown_requested_date()

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_requested = True
        with self._outside_loop():
            self.connection.set(self.keys.drain_flag(self.node_id), stop_mark(self.taker.token), nx=True)
        super().request_stop(signum, frame)

    # -- stopping a job, recycling the process --------------------------------------------
    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        self.call_stop.install()

    def request_stop_execution(self, execution_id: str) -> None:
        """rq's stop-execution command, from the node's stopper (worker/stopper.py), in rq's
        command thread: stop the call running that run, if one still is (call_stop.py)."""
        if self.call_stop.request(execution_id):
            log.info("stopping the running call on request node=%s slot=%d execution=%s", self.node_id, self.slot,
                     execution_id)  # fmt: skip

    def stops_asked(self, executions: Sequence[Execution]) -> set[str]:
        """The ids of those runs that this node was asked to stop (keys.stop_requests)."""
        asked = {read_id(m) for m in self.connection.smembers(self.keys.stop_requests(self.node_id))}
        return {e.id for e in executions if e.composite_key in asked}

    def after_call(self, jobs: int, *, cuda_oom: bool) -> None:
        """A call of `jobs` jobs has returned or raised, its outcomes not recorded yet: whether
        this process is to make way for a fresh one (recycle.py) is settled now, so the record
        takes no next job, and rq's loop ends once the record is written. A CUDA OOM first ejects
        the node for Settings.oom_cooldown_s, so the retries of the call's jobs go to another node
        when one can take them, and its queued jobs are handed back meanwhile."""
        self.jobs_run += jobs
        reason = CUDA_OOM if cuda_oom else self.recycle.crossed(self.jobs_run, rss_mib)
        if reason and not self.recycle_reason:
            self.recycle_reason = reason
            self._stop_requested = True
        if cuda_oom and (cooldown_ms := int(self.fleet_settings.oom_cooldown_s * 1000)):
            self.connection.set(self.keys.ejected(self.node_id), OOM_EJECTION, px=cooldown_ms, nx=True)

    def handle_job_stopped(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Record a run stopped on request: the job ends canceled (STOP_REASON in gf_error), in
        the node queue's canceled registry and its batch's canceled counter, as a cancel ends a
        queued job, and its stop request is dropped. Fenced like a success; False when the job
        had been handed back meanwhile (nothing written)."""
        s = self.fleet_settings
        batch_id = job.batch_id if isinstance(job, FleetJob) else ""
        writes = FencedWrites(self.connection)
        p = writes.group(execution.composite_key, counted_batch=batch_id)
        job.set_status(JobStatus.CANCELED, pipeline=p)
        p.hset(job.key, mapping={"ended_at": utcformat(job.ended_at or now()), JobField.ERROR: STOP_REASON})
        p.zadd(Keys.rq_canceled(queue.name), {job.id: time.time() + s.result_ttl_s})
        p.expire(job.key, s.result_ttl_s)
        if isinstance(job, FleetJob):
            job._count(BatchCounter.CANCELED, p)
        add_event(p, self.keys, s.events_max, EventKind.JOB_CANCELED, batch=batch_id, job=job.id, error=STOP_REASON)
        p.srem(self.keys.stop_requests(self.node_id), execution.composite_key)
        self.cleanup_execution(job, pipeline=writes.group(), execution=execution)
        with self.connection.pipeline(transaction=False) as run:
            self.scripts.apply_fenced(run, self.node_id, writes, events_max=s.events_max)
            applied = bool(run.execute()[0][0])
        if applied:
            log.info("job stopped on request, canceled node=%s job=%s", self.node_id, job.id)
        else:
            self.late(job, execution)
        return applied

    # -- starting -------------------------------------------------------------------------
    def start(self, jobs: Sequence[Job]) -> tuple[list[Job], list[Execution]]:
        """Start `jobs`: the ones their take started already (dequeued) as they are, the held
        ones (a batch's others) with rq's prepare_execution and prepare_job_execution, as one
        start_jobs call with rq's worker heartbeat, one round trip; the ones started, with their
        executions. A job no longer held is left out: recovery gave it back meanwhile."""
        started = [(j, self._prestarted.pop(j.id)) for j in jobs if j.id in self._prestarted]
        held = [j for j in jobs if j.id not in {s.id for s, _ in started}]
        if held:
            started += self._start_held(held)
        return [j for j, _ in started], [e for _, e in started]

    def _start_held(self, jobs: list[Job]) -> list[tuple[Job, Execution]]:
        stamp = self._stamp()
        start = JobStart(self.taker, stamp, [(j.id, uuid4().hex) for j in jobs])
        with self.connection.pipeline(transaction=False) as p:
            self.heartbeat(max(self.get_heartbeat_ttl(j) for j in jobs), pipeline=p)
            self.scripts.start_jobs(p, start)
            owner, *flags = p.execute()[-1]
        if owner == 0:
            raise self._taken_over()
        if owner == -1:  # the node's liveness expired (this process was stopped, or Redis away that long)
            log.warning("node looks dead, jobs put back until its heartbeat returns node=%s jobs=%d", self.node_id,
                        len(jobs))  # fmt: skip
            for job in jobs:
                self.scripts.put_back_job(self.taker, job.id)
            time.sleep(self.fleet_settings.heartbeat_interval_s)
            return []
        self._state = WorkerStatus.BUSY  # what start_job wrote
        at = stamp.at
        started = []
        for job, (_, execution_id), flag in zip(jobs, start.jobs, flags):
            if flag != 1:
                log.warning("job not started: %s node=%s job=%s", "job data missing" if flag == -1 else
                            "handed back meanwhile", self.node_id, job.id)  # fmt: skip
                continue
            started.append((job, self._execution(job, execution_id, at)))
        return started

    # -- recording ------------------------------------------------------------------------
    @staticmethod
    def _attempt(job: Job) -> int:
        """This execution's number: attempts as read at dequeue, plus this one."""
        return int(job.fleet.get(JobField.ATTEMPTS, 0) if isinstance(job, FleetJob) else 0) + 1

    def late(self, job: Job, execution: Execution) -> None:
        """A result not written: the job had been handed back meanwhile (this node was declared
        dead, or its new incarnation recovered the job), or its write went through before the
        connection broke. If the start itself was lost (Redis failed over before it reached the
        replica), the job is still in the held list: it goes back to the queue."""
        log.warning("late result dropped: job moved on node=%s job=%s attempt=%d", self.node_id, job.id,
                    self._attempt(job))  # fmt: skip
        self.scripts.put_back_job(self.taker, job.id)

    def record_successes(self, done: list[tuple[Job, Execution, Any]]) -> set[str]:
        """What rq's handle_job_success leaves behind, for several jobs in one transaction
        (finish_jobs.lua): each job finished with its ended_at, its Result, the finished
        registry, its expiry, its execution cleaned up; the worker's counters, batch counters
        and the dispatcher's wake-up. Leaner than rq's per-job path, which re-saves the whole
        job HASH and handles dependents, repeats and callbacks (gpufleet jobs have none). Each
        job's writes are fenced (made only if its execution is still current, in the same
        atomic step); the same transaction takes and starts the node queue's next job
        (take_job), which the loop then runs without a round trip of its own. Returns the ids
        of the jobs whose results were late."""
        if not done:
            return set()
        finishes = [self._finish(job, execution, value) for job, execution, value in done]
        self._state = WorkerStatus.IDLE  # what finish_jobs writes
        start = self._take_start(1) if self._may_take_next() else None
        with self.connection.pipeline() as p:
            self.scripts.finish_jobs(p, self.node_id, self.name, finishes, events_max=self.fleet_settings.events_max)
            if start:
                self.scripts.take_job(self.taker, start, pipeline=p)
            replies = p.execute()
        late = {job.id for (job, _, _), flag in zip(done, replies[0]) if not flag}
        for _, execution, _ in done:
            self.executions.pop(execution.id, None)
        if start:
            taken = self._started(replies[1], start)
            if taken:
                self._taken = taken[0]
            self._found_empty = not taken
        return late

    def _finish(self, job: Job, execution: Execution, value: Any) -> Finish:
        """What finish_jobs writes for `job`'s success, in rq's formats (Result.serialize, the
        registry's score as FinishedJobRegistry.add computes it)."""
        job._result, job._status = value, JobStatus.FINISHED
        ttl = job.get_result_ttl(self.default_result_ttl)
        result = Result(job.id, Result.Type.SUCCESSFUL, self.connection, return_value=value, worker_name=self.name,
                        serializer=job.serializer, execution_id=execution.id,
                        execution_started_at=execution.created_at, execution_ended_at=job.ended_at)  # fmt: skip
        score: float | str = ""
        if ttl:
            score = ttl if ttl < 0 else current_timestamp() + ttl
            score = "+inf" if score == -1 else score
        ended_at = job.ended_at or now()  # set by the record step (job_run._record)
        working_s = (ended_at - job.started_at).total_seconds() if job.started_at else 0.0
        return Finish(job.id, execution.id, utcformat(ended_at), "" if ttl is None else str(ttl), str(score),
                      working_s, job.batch_id if isinstance(job, FleetJob) else "", result.serialize())  # fmt: skip

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Execution | None = None, *, retry: bool = True,
                           node_fault: bool = False) -> bool:  # fmt: skip
        """Record a failed run: a retry after a backoff while its retries allow (and `retry`),
        else the failure for good. A run that failed by its node's doing (`node_fault`: a CUDA
        OOM, a batch-mate's stop) is retried as a lost node's is, up to max(retries,
        Settings.node_loss_retries) times. Fenced like a success; False when the job had been
        handed back meanwhile (nothing written). rq calls it too, with no execution: then unfenced."""
        attempt = self._attempt(job)
        retries = int(job.fleet.get(JobField.RETRIES, 0) if isinstance(job, FleetJob) else 0)
        if node_fault:
            retries = max(retries, self.fleet_settings.node_loss_retries)
        writes = FencedWrites(self.connection)
        member = execution.composite_key if execution else ""
        if retry and self._stopped_job_id != job.id and may_retry(attempt, retries):
            delay_s = self._schedule_retry(writes.group(member), job, exc_string, execution, attempt)
        else:
            delay_s = None
            batch_id = job.batch_id if isinstance(job, FleetJob) else ""
            self._record_failure(writes.group(member, counted_batch=batch_id), job, exc_string, execution)
        self.cleanup_execution(job, pipeline=writes.group(), execution=execution)
        with self.connection.pipeline(transaction=False) as run:
            self.scripts.apply_fenced(run, self.node_id, writes, events_max=self.fleet_settings.events_max)
            applied = bool(run.execute()[0][0])
        if applied and delay_s is not None:
            log.info("job retry scheduled job=%s attempt=%d in=%.2fs", job.id, attempt, delay_s)
        if not applied and execution is not None:
            self.late(job, execution)
        return applied

    def _schedule_retry(self, p: Pipeline, job: Job, exc_string: str, execution: Execution | None,
                        attempt: int) -> float:  # fmt: skip
        """Queue on `p` this attempt's error, the job's wait in the retry schedule until its
        backoff has passed, and its job_retried event; the backoff."""
        s = self.fleet_settings
        delay_s = retry_delay_s(attempt, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=self._rng)
        priority = job.fleet.get(JobField.PRIORITY, "normal") if isinstance(job, FleetJob) else "normal"
        Result.create_failure(job, s.result_ttl_s, exc_string=exc_string, worker_name=self.name, pipeline=p,
                              execution_id=execution.id if execution else None,
                              execution_started_at=execution.created_at if execution else None,
                              execution_ended_at=job.ended_at)  # fmt: skip
        job.set_status(JobStatus.SCHEDULED, pipeline=p)
        p.hset(job.key, mapping={"origin": self.keys.ingress_queue(priority), JobField.NODE: ""})
        p.zadd(self.keys.retry_schedule(priority), {job.id: time.time() + delay_s})
        self.increment_failed_job_count(p)
        wake_dispatcher(p, self.keys)
        self._event(p, EventKind.JOB_RETRIED, job, attempt, exc_string)
        return delay_s

    def _record_failure(self, p: Pipeline, job: Job, exc_string: str, execution: Execution | None) -> None:
        """Queue on `p` what rq's handle_job_failure writes for a job that fails for good
        (gpufleet jobs have no rq retries, dependents or callbacks), and its job_failed event."""
        job.set_status(JobStatus.FAILED, pipeline=p)
        job._handle_failure(exc_string, pipeline=p, worker_name=self.name,
                            execution_id=execution.id if execution else None,
                            execution_started_at=execution.created_at if execution else None,
                            execution_ended_at=job.ended_at)  # fmt: skip
        self.increment_failed_job_count(p)
        if job.started_at and job.ended_at:
            self.increment_total_working_time(job.ended_at - job.started_at, p)
        self._event(p, EventKind.JOB_FAILED, job, self._attempt(job), exc_string)

    def _event(self, p: Pipeline, kind: str, job: Job, attempt: int, exc_string: str) -> None:
        """Queue on `p` the event of a failed attempt (job_retried, job_failed)."""
        batch = job.batch_id if isinstance(job, FleetJob) else ""
        add_event(p, self.keys, self.fleet_settings.events_max, kind, batch=batch, job=job.id, node=self.node_id,
                  attempt=attempt, error=short_error(exc_string))  # fmt: skip
