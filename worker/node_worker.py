"""NodeWorker: rq's SimpleWorker plus what a fleet node needs around each job.

- counters for the heartbeat (running, completed, failed, service time);
- retries: a failed job with retries left waits out a backoff in the retry schedule, then
  the dispatcher returns it to the ingress, so it can run on any node;
- fencing: a result is written only if the job is still this node's current attempt (a node
  declared dead may finish a job that was already handed to another node);
- SIGINT/SIGTERM drain the node first (nothing new is routed here), then rq's warm shutdown
  lets the running job finish.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.results import Result

from dispatcher.job import FleetJob, wake_dispatcher
from dispatcher.keys import JobField, Keys
from dispatcher.retry import may_retry, retry_delay_s
from dispatcher.settings import Settings

from .stats import NodeStats

log = logging.getLogger(__name__)

STOP_DRAIN_MARK = "stopping"  # drain flag value a stopping worker sets (and clears on exit)
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError)


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
        self._rng = random.Random()
        self.unfinished_job_id: str | None = None  # set while a job's outcome is not yet recorded
        self.stop_requested = False  # rq raises StopRequested when idle without keeping a flag

    def execute_job(self, job: Job, queue: Queue) -> None:
        self.stats.job_started(self.slot)
        self.unfinished_job_id = job.id
        started = time.perf_counter()
        ok = False
        try:
            super().execute_job(job, queue)
            ok = job.get_status(refresh=False) == JobStatus.FINISHED
            self.unfinished_job_id = None
        finally:
            self.stats.job_ended(time.perf_counter() - started, ok, self.slot)

    def request_stop(self, signum: Any, frame: Any) -> None:
        self.stop_requested = True
        self.connection.set(self.keys.drain_flag(self.node_id), STOP_DRAIN_MARK, nx=True)
        super().request_stop(signum, frame)

    # -- fencing -------------------------------------------------------------------------
    @staticmethod
    def _attempt(job: Job) -> int:
        """This execution's number: attempts as read at dequeue, plus this one."""
        return int(job.fleet.get(JobField.ATTEMPTS, 0) if isinstance(job, FleetJob) else 0) + 1

    def _is_stale(self, job: Job) -> bool:
        node, attempts = self.connection.hmget(job.key, JobField.NODE, JobField.ATTEMPTS)
        return (node or b"").decode() != self.node_id or int(attempts or 0) != self._attempt(job)

    def _drop_stale(self, job: Job, execution: Execution | None) -> None:
        log.warning("late result dropped: job moved on node=%s job=%s attempt=%d", self.node_id, job.id,
                    self._attempt(job))  # fmt: skip
        with self.connection.pipeline() as p:
            self.cleanup_execution(job, pipeline=p, execution=execution)
            p.execute()

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: Any, execution: Execution) -> None:
        try:
            if self._is_stale(job):
                return self._drop_stale(job, execution)
            super().handle_job_success(job, queue, started_job_registry, execution)
        except REDIS_DOWN as e:
            raise OutcomeNotRecorded(str(e)) from e

    def _finalize_failure(self, job: Job, queue: Queue, execution: Execution, exc_info: Any) -> None:
        if isinstance(exc_info[1], OutcomeNotRecorded):
            raise exc_info[1]
        super()._finalize_failure(job, queue, execution, exc_info)

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Execution | None = None) -> None:  # fmt: skip
        if self._is_stale(job):
            return self._drop_stale(job, execution)
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
