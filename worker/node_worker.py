"""NodeWorker: rq's SimpleWorker plus what a fleet node needs around each job.

- counters for the heartbeat (running, completed, failed, service time);
- retries: a failed job with retries left waits out a backoff in the retry schedule, then
  the dispatcher returns it to the ingress, so it can run on any node;
- fencing: a result is written only if the job is still this node's current attempt (a node
  declared dead may finish a job that was already handed to another node);
- SIGINT/SIGTERM drain the node first (nothing new is routed here), then rq's warm shutdown
  lets the running job finish;
- lean bookkeeping: each run (a job, or a batch of a task marked @batched) is started and
  recorded in a few pipelines (job_run.py), not rq's ~20 round trips per job; rq's own
  worker heartbeat and state writes are skipped when they would change nothing.
"""

from __future__ import annotations

import logging
import random
import time
from collections import Counter
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.worker import WorkerStatus
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result
from rq.utils import utcformat

from dispatcher.job import BatchCounter, FleetJob, wake_dispatcher
from dispatcher.keys import JobField, Keys
from dispatcher.retry import may_retry, retry_delay_s
from dispatcher.scripts import Scripts
from dispatcher.settings import Settings

from . import context
from .job_run import JobRun
from .stats import NodeStats

log = logging.getLogger(__name__)

STOP_DRAIN_MARK = "stopping"  # drain flag value a stopping worker sets (and clears on exit)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)
RQ_HEARTBEAT_EVERY_S = 1.0  # rq's worker-registry heartbeat (its TTL is minutes), at most this often
RQ_SUSPENSION_CHECK_EVERY_S = 1.0  # `rq suspend` is noticed within this long


class OutcomeNotRecorded(Exception):
    """Raised when Redis failed while a job's result was being written: not the job's fault,
    so it must not count as the job failing. It ends rq's loop; run.work_slot then gives the
    job back once Redis answers again."""


class NodeWorker(SimpleWorker):
    """A SimpleWorker bound to one fleet node's queue."""

    def __init__(self, *args: Any, node_id: str, settings: Settings, stats: NodeStats, slot: int = 0,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self.node_id = node_id
        self.fleet_settings = settings
        self.keys = Keys(settings.namespace)
        self.stats = stats
        self.slot = slot
        self.scripts = Scripts(self.connection, self.keys)
        self._rng = random.Random()
        self.unfinished_job_ids: set[str] = set()  # jobs started whose outcome is not yet recorded
        self.stop_requested = False  # rq raises StopRequested when idle without keeping a flag
        self._rq_heartbeat_at = self._suspension_checked_at = float("-inf")
        self._models_reported = 0
        self._taken: tuple[str, dict[bytes, bytes]] | None = None  # next job, taken with the last one recorded

    def execute_job(self, job: Job, queue: Queue) -> None:
        try:
            JobRun(self, queue, job).run()
        finally:
            warm = context.current().models  # a task may have loaded a model in this slot's process
            if len(warm) != self._models_reported:
                self.stats.add_models(warm)
                self._models_reported = len(warm)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        try:
            return super().work(*args, **kwargs)
        finally:
            self._put_back_taken()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None
                                     ) -> tuple[Job, Queue] | None:  # fmt: skip
        """rq's dequeue, unless the transaction that recorded the last job took the next one too
        (record_successes): then that job, with no round trip."""
        if self._taken is None:
            return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        (job_id, fields), self._taken = self._taken, None
        job = self.job_class(job_id, connection=self.connection, serializer=self.serializer)
        job.restore(fields)
        job.redis_server_version = self.get_redis_server_version()
        self.heartbeat()
        return job, self.queues[0]

    def _may_take_next(self) -> bool:
        return not (self.stop_requested or self._stop_requested)

    def _put_back_taken(self) -> None:
        """A job taken but not started (the loop ended) goes back to the head of the node queue;
        if Redis is down, work_slot hands it back with the unfinished ones."""
        if self._taken is None:
            return
        job_id, self._taken = self._taken[0], None
        try:
            self.scripts.put_back_job(self.queues[0].name, job_id)
        except REDIS_DOWN:
            self.unfinished_job_ids.add(job_id)

    def heartbeat(self, timeout: int | None = None, pipeline: Any = None) -> None:
        """rq's worker heartbeat, which its loop sends around every job: at most once a second
        unless it rides in a pipeline or sets a job's TTL."""
        if pipeline is None and timeout is None:
            if time.monotonic() - self._rq_heartbeat_at < RQ_HEARTBEAT_EVERY_S:
                return
            self._rq_heartbeat_at = time.monotonic()
        super().heartbeat(timeout, pipeline)

    def check_for_suspension(self, burst: bool) -> None:
        """rq's `rq suspend` check, which its loop makes before every job: once a second."""
        if time.monotonic() - self._suspension_checked_at >= RQ_SUSPENSION_CHECK_EVERY_S:
            super().check_for_suspension(burst)
            self._suspension_checked_at = time.monotonic()

    def set_state(self, state: str, pipeline: Any = None) -> None:
        """rq's worker state, written only when it changes (its loop sets idle twice per job)."""
        if pipeline is None and state == self.get_state():
            return
        super().set_state(state, pipeline)

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_requested = True
        self.connection.set(self.keys.drain_flag(self.node_id), STOP_DRAIN_MARK, nx=True)
        super().request_stop(signum, frame)

    # -- fencing -------------------------------------------------------------------------
    @staticmethod
    def _attempt(job: Job) -> int:
        """This execution's number: attempts as read at dequeue, plus this one."""
        return int(job.fleet.get(JobField.ATTEMPTS, 0) if isinstance(job, FleetJob) else 0) + 1

    def stale_job_ids(self, jobs: list[Job]) -> set[str]:
        """The jobs no longer this node's current attempt (one round trip for all of them)."""
        with self.connection.pipeline(transaction=False) as p:
            for job in jobs:
                p.hmget(job.key, JobField.NODE, JobField.ATTEMPTS)
            found = p.execute()
        return {
            job.id
            for job, (node, attempts) in zip(jobs, found)
            if (node or b"").decode() != self.node_id or int(attempts or 0) != self._attempt(job)
        }

    def drop_stale(self, job: Job, execution: Execution | None) -> None:
        log.warning("late result dropped: job moved on node=%s job=%s attempt=%d", self.node_id, job.id,
                    self._attempt(job))  # fmt: skip
        with self.connection.pipeline() as p:
            self.cleanup_execution(job, pipeline=p, execution=execution)
            p.execute()

    def record_successes(self, done: list[tuple[Job, Execution, Any]]) -> None:
        """What rq's handle_job_success leaves behind, for several jobs in one transaction: each
        job finished with its ended_at, its Result, the finished registry, its expiry, its
        execution gone from the started registry; batch counters and the dispatcher's wake-up
        once for all. Leaner than rq's per-job path, which re-saves the whole job HASH and
        handles dependents, repeats and callbacks (gpufleet jobs have none). The same
        transaction takes the node queue's next job (take_next_job), which the loop then starts
        without a dequeue round trip of its own."""
        if not done:
            return
        finished: Counter[str] = Counter()
        try:
            with self.connection.pipeline() as p:
                for job, execution, value in done:
                    job._result, job._status = value, JobStatus.FINISHED
                    ttl = job.get_result_ttl(self.default_result_ttl)
                    p.hset(job.key, mapping={"status": JobStatus.FINISHED.value, "ended_at": utcformat(job.ended_at)})
                    Result.create(job, Result.Type.SUCCESSFUL, ttl, return_value=value, worker_name=self.name,
                                  pipeline=p, execution_id=execution.id, execution_started_at=execution.created_at,
                                  execution_ended_at=job.ended_at)  # fmt: skip
                    if ttl:
                        job.finished_job_registry.add(job, ttl, p)
                    if ttl and ttl > 0:  # rq's job.cleanup also expires dependents' keys: gpufleet jobs have none
                        p.expire(job.key, ttl)
                    self.cleanup_execution(job, pipeline=p, execution=execution)
                    self.increment_successful_job_count(pipeline=p)
                    self.increment_total_working_time(job.ended_at - job.started_at, p)
                    finished[job.batch_id if isinstance(job, FleetJob) else ""] += 1
                for batch_id, count in finished.items():
                    if batch_id:
                        p.hincrby(self.keys.batch_info(batch_id), BatchCounter.FINISHED, count)
                wake_dispatcher(p, self.keys)
                self.set_state(WorkerStatus.IDLE, pipeline=p)
                take = self._may_take_next()
                if take:
                    self.scripts.take_next_job(p, self.queues[0].name)
                taken = p.execute()[-1]
        except REDIS_DOWN as e:
            raise OutcomeNotRecorded(str(e)) from e
        if take and taken and taken[1]:  # a job whose HASH is gone stays in the intermediate list, as with rq
            self._taken = (taken[0].decode(), dict(zip(taken[1][::2], taken[1][1::2])))

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Execution | None = None) -> None:  # fmt: skip
        if self.stale_job_ids([job]):
            return self.drop_stale(job, execution)
        attempt = self._attempt(job)
        retries = int(job.fleet.get(JobField.RETRIES, 0) if isinstance(job, FleetJob) else 0)
        if self._stopped_job_id != job.id and may_retry(attempt, retries):
            return self._schedule_retry(job, exc_string, execution, attempt)
        super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def _schedule_retry(self, job: Job, exc_string: str, execution: Execution | None, attempt: int) -> None:
        """Record this attempt's error and park the job until its backoff has passed."""
        s = self.fleet_settings
        delay_s = retry_delay_s(attempt, base_s=s.retry_base_s, cap_s=s.retry_cap_s, rng=self._rng)
        priority = job.fleet.get(JobField.PRIORITY, "normal") if isinstance(job, FleetJob) else "normal"
        with self.connection.pipeline() as p:
            self.cleanup_execution(job, pipeline=p, execution=execution)
            Result.create_failure(job, s.result_ttl_s, exc_string=exc_string, worker_name=self.name, pipeline=p,
                                  execution_id=execution.id if execution else None,
                                  execution_started_at=execution.created_at if execution else None,
                                  execution_ended_at=job.ended_at)  # fmt: skip
            job.set_status(JobStatus.SCHEDULED, pipeline=p)
            p.hset(job.key, mapping={"origin": self.keys.ingress_queue(priority), JobField.NODE: ""})
            p.zadd(self.keys.retry_schedule(priority), {job.id: time.time() + delay_s})
            self.increment_failed_job_count(p)
            wake_dispatcher(p, self.keys)
            p.execute()
        log.info("job retry scheduled job=%s attempt=%d in=%.2fs", job.id, attempt, delay_s)
