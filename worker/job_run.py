"""One run on a node: start a job (or a batch of them), make one call, record each outcome.

This replaces rq's per-job bookkeeping (about 20 round trips per job) with one round trip
per run that runs alone: the transaction that records a run (fenced) also takes and starts
the next job, which therefore needs no start of its own. A plain job runs alone; a job of a task marked @batched
is joined by up to max_size - 1 like jobs from the node queue. The jobs stay real rq jobs
throughout: each gets its own rq Execution in the started registry (so routing sees a batch
of 32 as 32 jobs running), its own Result or failure, its own retry and its own fence check.
Failures take a per-job path (they are the rare case). A job whose payload cannot be decoded
(not JSON: rq's pickle default, or garbage) fails for good with that reason; it is never
retried, and nothing of it runs.

A call can be stopped on request (cancel --running, call_stop.py): the jobs asked to stop end
canceled, and the other jobs of a batched call, cut short with it, run again. A call that raises
a CUDA out-of-memory error has its jobs retried as a lost node's are, on another node while this
one is ejected, and this slot process makes way for a fresh one (recycle.py).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rq.exceptions import DeserializationError
from rq.job import Job, JobStatus
from rq.timeouts import JobTimeoutException
from rq.utils import now

from gpufleet.dispatcher.fleet.health import STOP_REASON
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.job import FleetJob

from .batching import BatchSpec, batch_spec, per_job_results
from .call_stop import CallStop, JobStopped
from .interrupts import RedisLost
from .recycle import is_cuda_oom

if TYPE_CHECKING:
    from redis import Redis
    from rq import Queue
    from rq.executions import Execution
    from rq.timeouts import BaseDeathPenalty

    from gpufleet.dispatcher.store.scripts import Scripts, Taker

    from .stats import NodeStats

log = logging.getLogger(__name__)

POLL_S = 0.001  # how often the queue is looked at again while a batch waits to fill
OUTAGE_RETRY_S, MAX_OUTAGE_RETRY_S = 0.5, 10.0  # while Redis is away, outcomes are written again after
SCAN_FACTOR = 4  # jobs looked at per max_size when picking a batch out of a mixed queue


@dataclass(frozen=True)
class Outcome:
    """What one job's call gave: a result, or an error text, retried as its retries allow, never
    (`final`), or as a lost node's job is (`node_fault`: up to max(retries, node_loss_retries)
    times); or the job was stopped on request (`stopped`: it ends canceled)."""

    ok: bool
    value: Any
    final: bool = False
    node_fault: bool = False
    stopped: bool = False


STOPPED = Outcome(False, STOP_REASON, stopped=True)
CUT_SHORT = "interrupted: another job of its batched call was stopped on request"  # its batch-mates' error


class RunHost(Protocol):
    """What a run needs of the worker it runs in (node_worker.NodeWorker): its connection and
    node, and its fenced start and record steps. Declared here so the worker imports the run,
    and not the other way round."""

    connection: Redis
    node_id: str
    slot: int
    stats: NodeStats
    scripts: Scripts
    taker: Taker
    job_class: type[Job]
    serializer: Any
    death_penalty_class: type[BaseDeathPenalty]
    redis_lost: Exception | None
    call_stop: CallStop

    def start(self, jobs: Sequence[Job]) -> tuple[list[Job], list[Execution]]: ...

    def after_call(self, jobs: int, *, cuda_oom: bool) -> None: ...

    def stops_asked(self, executions: Sequence[Execution]) -> set[str]: ...

    def handle_job_stopped(self, job: Job, queue: Queue, execution: Execution) -> bool: ...

    def record_successes(self, done: list[tuple[Job, Execution, Any]]) -> set[str]: ...

    def late(self, job: Job, execution: Execution) -> None: ...

    def handle_job_failure(self, job: Job, queue: Queue, started_job_registry: Any = None, exc_string: str = "",
                           execution: Execution | None = None, *, retry: bool = True,
                           node_fault: bool = False) -> bool: ...  # fmt: skip


def _model(job: Job) -> str:
    return job.model if isinstance(job, FleetJob) else ""


def undecodable(job: Job) -> str | None:
    """Why the job's payload cannot be read (its function and arguments), or None."""
    try:
        job.func_name, job.args  # noqa: B018  # rq decodes `data` on first access
    except DeserializationError as e:
        return f"cannot decode job payload ({type(e.__cause__ or e).__name__}: {e.__cause__ or e})"
    return None


class JobRun:
    """Runs `first` (already taken); when its task is batched, with up to `max_size - 1` more
    jobs of the same function and model taken from the node queue."""

    def __init__(self, worker: RunHost, queue: Queue, first: Job) -> None:
        self.worker, self.queue, self.first = worker, queue, first
        self.conn = worker.connection
        try:
            self.spec = batch_spec(first.func)
        except Exception:  # not allowed, not importable or not decodable: the call fails and records why
            self.spec = None
        self.cuda_oom = False  # the call raised a CUDA out-of-memory error

    def run(self) -> None:
        w = self.worker
        jobs = [self.first]
        if self.spec is not None:
            w.stats.saw_batch_size(self.spec.max_size)
            jobs += self._gather(self.spec)
        jobs, executions = w.start(jobs)
        if not jobs:
            return
        w.stats.job_started(w.slot, len(jobs))
        started = time.perf_counter()
        ok = stopped = 0
        try:
            outcomes = self._call(jobs, executions)
            stopped = sum(o.stopped for o in outcomes)
            w.after_call(len(jobs), cuda_oom=self.cuda_oom)
            ok = record_outcomes(w, self.queue, jobs, executions, outcomes)
        finally:
            elapsed = time.perf_counter() - started
            w.stats.job_ended(elapsed, True, w.slot, ok)
            w.stats.job_ended(elapsed, False, w.slot, len(jobs) - ok - stopped)
            w.stats.jobs_stopped(w.slot, stopped)
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
                if job is not None and undecodable(job) is None and job.func_name == func and _model(job) == model:
                    alike.append(job)
                else:
                    unlike.add(job_id)
            claimed = self.worker.scripts.claim_jobs(self.worker.taker, [j.id for j in alike])
            taken += [j for j, ok in zip(alike, claimed) if ok]
            left_s = deadline - time.monotonic()
            if len(taken) >= want or left_s <= 0:
                return taken
            if len(alike) < len(fresh):  # jobs of another batch were in the way: look past them now
                continue
            time.sleep(min(POLL_S, left_s))

    # -- the call -------------------------------------------------------------------------
    def _call(self, jobs: list[Job], executions: list[Execution]) -> list[Outcome]:
        """An Outcome per job, from one call: the job's function with its arguments, or the
        batched function with the list of inputs; stoppable on request while it runs."""
        if (why := undecodable(self.first)) is not None:  # never batched: a batch's jobs all decoded
            log.warning("job failed node=%s job=%s error=%s", self.worker.node_id, self.first.id, why)
            return [Outcome(False, why, final=True)]
        timeout = max(j.timeout or self.queue.DEFAULT_TIMEOUT for j in jobs)
        try:
            with (self.worker.death_penalty_class(timeout, JobTimeoutException, job_id=self.first.id),
                  self.worker.call_stop.stoppable(e.id for e in executions)):  # fmt: skip
                if self.spec is None:
                    return [Outcome(True, self.first.perform())]
                returned = self.first.func([j.args[0] if j.args else None for j in jobs])
            results = per_job_results(returned, len(jobs))
        except JobStopped:
            return self._stopped(executions)
        except Exception as e:
            error = "".join(traceback.format_exception(*sys.exc_info()))
            self.cuda_oom = is_cuda_oom(e)
            log.warning("job failed node=%s func=%s jobs=%d cuda_oom=%s error=%s", self.worker.node_id,
                        self.first.func_name, len(jobs), self.cuda_oom, error.strip().splitlines()[-1])  # fmt: skip
            return [Outcome(False, error, node_fault=self.cuda_oom)] * len(jobs)
        return [
            Outcome(False, "".join(traceback.format_exception(r))) if isinstance(r, BaseException) else Outcome(True, r)
            for r in results
        ]

    def _stopped(self, executions: list[Execution]) -> list[Outcome]:
        """The outcomes of a call stopped on request: STOPPED for each job asked to stop, and for
        each other job of a batched call, cut short with it, a failure that runs it again."""
        asked = set(self.worker.call_stop.requested)
        if len(executions) > 1:  # which of its batch-mates were asked too (their requests may come later)
            asked |= self.worker.stops_asked(executions)
        log.info("call stopped on request node=%s func=%s jobs=%d stopped=%d", self.worker.node_id,
                 self.first.func_name, len(executions), len(asked))  # fmt: skip
        return [STOPPED if e.id in asked else Outcome(False, CUT_SHORT, node_fault=True) for e in executions]


# -- recording ----------------------------------------------------------------------------
def record_outcomes(w: RunHost, queue: Queue, jobs: Sequence[Job], executions: Sequence[Execution],
                    outcomes: Sequence[Outcome]) -> int:  # fmt: skip
    """Record the outcomes, waiting out a Redis outage rather than losing them: a job that
    took an hour does not run again because Redis blinked. The fence makes a try idempotent (a
    job whose record went through before the connection broke has left the started registry,
    so it is not written twice). After an outage the loop ends (RedisLost) so the slot starts
    over and gives back anything else it held, such as a next job taken in a transaction whose
    reply was lost. Returns the number of successes recorded."""
    recorded: set[str] = set()  # outcomes written (or dropped as late) so far
    succeeded: set[str] = set()
    lost: Exception | None = None
    wait_s = OUTAGE_RETRY_S
    ended = now()
    while True:
        try:
            _record(w, queue, list(zip(jobs, executions, outcomes)), ended, recorded, succeeded)
            break
        except REDIS_DOWN as e:
            if lost is None:
                log.error("redis unreachable, outcomes held until it answers node=%s jobs=%d error=%s", w.node_id,
                          len(jobs) - len(recorded), e)  # fmt: skip
            lost = e
            time.sleep(wait_s)
            wait_s = min(MAX_OUTAGE_RETRY_S, wait_s * 2)
    if lost is not None:
        log.info("redis reachable again, outcomes recorded node=%s", w.node_id)
        w.redis_lost = lost
        raise RedisLost(str(lost))
    return len(succeeded)


def _record(w: RunHost, queue: Queue, runs: list[tuple[Job, Execution, Outcome]], ended: Any, recorded: set[str],
            succeeded: set[str]) -> None:  # fmt: skip
    """Each job's result (successes in one transaction) or failure, each written only if the
    job is still this run's (late results are dropped). Jobs in `recorded` are done already (an
    earlier try); the others are added as they are handled, the successes to `succeeded`."""
    todo = [(j, e, o) for j, e, o in runs if j.id not in recorded]
    for job, _, _ in todo:
        job.ended_at = ended
    done = [(j, e, o.value) for j, e, o in todo if o.ok]
    late = w.record_successes(done)
    for job, execution, _ in done:
        recorded.add(job.id)
        if job.id in late:
            w.late(job, execution)
        else:
            succeeded.add(job.id)
    for job, execution, outcome in todo:
        if outcome.stopped:
            w.handle_job_stopped(job, queue, execution)
            recorded.add(job.id)
        elif not outcome.ok:
            job._status = JobStatus.FAILED
            w.handle_job_failure(job, queue, exc_string=outcome.value, execution=execution, retry=not outcome.final,
                                 node_fault=outcome.node_fault)  # fmt: skip
            recorded.add(job.id)
