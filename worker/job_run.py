"""One run on a node: start a job (or a batch of them), make one call, record each outcome.

This replaces rq's per-job bookkeeping (about 20 round trips per job) with three pipelines
per run: start, fence check, record. A plain job runs alone; a job of a task marked
@batched is joined by up to max_size - 1 like jobs from the node queue. The jobs stay real
rq jobs throughout: each gets its own rq Execution in the started registry (so routing sees
a batch of 32 as 32 jobs running), its own Result or failure, its own retry and its own
fence check. Failures take rq's per-job path (they are the rare case).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import TYPE_CHECKING, Any

from rq.executions import Execution
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.utils import now
from rq.worker import WorkerStatus

from dispatcher.job import FleetJob

from .batching import BatchSpec, batch_spec, per_job_results

if TYPE_CHECKING:
    from rq import Queue

    from .node_worker import NodeWorker

log = logging.getLogger(__name__)

POLL_S = 0.001  # how often the queue is looked at again while a batch waits to fill
SCAN_FACTOR = 4  # jobs looked at per max_size when picking a batch out of a mixed queue


def _model(job: Job) -> str:
    return job.model if isinstance(job, FleetJob) else ""


class JobRun:
    """Runs `first` (already dequeued by rq); when its task is batched, with up to
    `max_size - 1` more jobs of the same function and model taken from the node queue."""

    def __init__(self, worker: NodeWorker, queue: Queue, first: Job) -> None:
        self.worker, self.queue, self.first = worker, queue, first
        self.conn = worker.connection
        try:
            self.spec = batch_spec(first.func)
        except Exception:  # not allowed or not importable: the call fails and records why
            self.spec = None

    def run(self) -> None:
        w = self.worker
        jobs = [self.first]
        if self.spec is not None:
            w.stats.saw_batch_size(self.spec.max_size)
            jobs += self._gather(self.spec)
        w.unfinished_job_ids = {j.id for j in jobs}
        executions = self._start(jobs)
        w.stats.job_started(w.slot, len(jobs))
        started = time.perf_counter()
        ok = 0
        try:
            ok = self._record(jobs, executions, self._call(jobs))
            w.unfinished_job_ids = set()
        finally:
            elapsed = time.perf_counter() - started
            w.stats.job_ended(elapsed, True, w.slot, ok)
            w.stats.job_ended(elapsed, False, w.slot, len(jobs) - ok)
        log.debug("run done node=%s size=%d ok=%d seconds=%.4f", w.node_id, len(jobs), ok, elapsed)

    # -- gathering ------------------------------------------------------------------------
    def _gather(self, spec: BatchSpec) -> list[Job]:
        """More jobs like the first from the node queue, waiting at most max_wait_ms for them."""
        want = spec.max_size - 1
        if want < 1:
            return []
        deadline = time.monotonic() + spec.max_wait_ms / 1000
        func, model = self.first.func_name, _model(self.first)
        unlike: set[str] = set()  # jobs seen that cannot join (another batch's, or gone): not fetched again
        taken: list[Job] = []
        while True:
            ids = [i.decode() for i in self.conn.lrange(self.queue.key, 0, SCAN_FACTOR * spec.max_size - 1)]
            fresh = [i for i in ids if i not in unlike][: want - len(taken)]  # fetch no more than may join
            alike = []
            found = self.worker.job_class.fetch_many(fresh, connection=self.conn, serializer=self.worker.serializer)
            for job_id, job in zip(fresh, found):
                if job is not None and job.func_name == func and _model(job) == model:
                    alike.append(job)
                else:
                    unlike.add(job_id)
            claimed = set(self.worker.scripts.claim_jobs(self.queue.name, [j.id for j in alike]))
            taken += [j for j in alike if j.id in claimed]
            left_s = deadline - time.monotonic()
            if len(taken) >= want or left_s <= 0:
                return taken
            if len(alike) < len(fresh):  # jobs of another batch were in the way: look past them now
                continue
            time.sleep(min(POLL_S, left_s))

    # -- starting -------------------------------------------------------------------------
    def _start(self, jobs: list[Job]) -> list[Execution]:
        """What rq's prepare_execution and prepare_job_execution do per job, in one pipeline."""
        w = self.worker
        ttl = max(w.get_heartbeat_ttl(j) for j in jobs)
        executions = []
        with self.conn.pipeline() as p:
            w.heartbeat(ttl, pipeline=p)
            w.set_state(WorkerStatus.BUSY, pipeline=p)
            for job in jobs:
                execution = Execution.create(job, ttl, pipeline=p, worker_name=w.name)
                w.executions[execution.id] = execution
                executions.append(execution)
                job.heartbeat(now(), ttl, pipeline=p)
                job.prepare_for_execution(w.name, pipeline=p)
                p.persist(job.key)
                p.lrem(self.queue.intermediate_queue_key, 1, job.id)
            p.execute()
        return executions

    # -- the call -------------------------------------------------------------------------
    def _call(self, jobs: list[Job]) -> list[tuple[bool, Any]]:
        """(ok, result or error text) per job, from one call: the job's function with its
        arguments, or the batched function with the list of inputs."""
        timeout = max(j.timeout or self.queue.DEFAULT_TIMEOUT for j in jobs)
        try:
            with self.worker.death_penalty_class(timeout, JobTimeoutException, job_id=self.first.id):
                if self.spec is None:
                    return [(True, self.first.perform())]
                returned = self.first.func([j.args[0] if j.args else None for j in jobs])
            results = per_job_results(returned, len(jobs))
        except Exception:
            error = "".join(traceback.format_exception(*sys.exc_info()))
            log.warning("job failed node=%s func=%s jobs=%d error=%s", self.worker.node_id, self.first.func_name,
                        len(jobs), error.strip().splitlines()[-1])  # fmt: skip
            return [(False, error)] * len(jobs)
        return [
            (False, "".join(traceback.format_exception(r))) if isinstance(r, BaseException) else (True, r)
            for r in results
        ]

    # -- recording ------------------------------------------------------------------------
    def _record(self, jobs: list[Job], executions: list[Execution], outcomes: list[tuple[bool, Any]]) -> int:
        """Each job's result (successes in one pipeline) or failure; late results are dropped.
        Returns the number of successes recorded."""
        w = self.worker
        ended = now()
        stale = w.stale_job_ids(jobs)
        done = [(j, e, value) for j, e, (ok, value) in zip(jobs, executions, outcomes) if ok and j.id not in stale]
        for job, execution in zip(jobs, executions):
            job.ended_at = ended
            if job.id in stale:
                w.drop_stale(job, execution)
        w.record_successes(done)
        for job, execution, (ok, error) in zip(jobs, executions, outcomes):
            if not ok and job.id not in stale:
                job._status = JobStatus.FAILED
                w.handle_job_failure(job, self.queue, exc_string=error, execution=execution)
        return len(done)
