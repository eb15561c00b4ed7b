"""The Python client: submit batches and follow them from a program, as the CLI does from a shell.

    with Client() as client:                      # GPUFLEET_REDIS_URL, GPUFLEET_NAMESPACE
        batch = client.submit("mypkg.infer:run", inputs, priority="high")
        batch.wait(progress=True)
        for record in batch.results(): ...        # the stable `gpufleet results` records
        for value in client.map("mypkg.infer:run", inputs): ...   # return values, in input order

One connection, and the same code as the CLI under it: Submitter (submit.py), results.py and
fleet/control.py's cancel. Every job is checked before any is enqueued, by a job file's rules
(jobfile.check_specs). The job's module is never imported here: the worker resolves it.

Nothing tells a client that a job ended (a worker wakes only the dispatcher), so waiting polls,
one small read at a time: `wait` reads the batch's counters (one HGETALL) 10 ms after it
starts, doubling to every 200 ms (the CLI's --wait rate); `results(wait=True)` and `map` read
the status of the next job in order (one HGET) 10 ms after yielding, doubling to 200 ms while
that job runs, and read the records of every job that ended behind it in one pipeline.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import repeat
from types import TracebackType
from typing import IO, Any, TypeVar

import redis
from redis import Redis
from rq.job import JobStatus
from rq.utils import as_text

from ..errors import BatchTimeout, GpufleetError, JobFailed, JobFileError
from ..fleet.control import CancelReport, cancel
from ..routing.models import JobSpec
from ..settings import Settings
from ..store.connection import connect, mask_url
from ..store.job import job_class
from ..store.keys import Keys
from .jobfile import check_specs
from .notify import check_notify_url, set_notify
from .results import (
    READ_CHUNK,
    BatchProgress,
    WriteReport,
    iter_results,
    read_batch_status,
    read_progress,
    result_record,
    write_results,
)
from .submit import SubmitReceipt, Submitter, submit_file

log = logging.getLogger(__name__)

T = TypeVar("T")
C = TypeVar("C", bound="Client")  # __enter__ returns the subclass it was called on
POLL_MIN_S = 0.01  # the first pause between two polls...
POLL_MAX_S = 0.2  # ...doubling up to this (the CLI's --wait polls at 0.2 s)
ENDED = frozenset(s.value for s in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.STOPPED))


# Two errors of the Python API only. They belong in errors.py's tree (both are GpufleetErrors);
# they are defined here because this change could not touch errors.py.
class Batch:
    """A submitted batch: follow it (progress, wait, status), read its results, cancel it.

    Client.submit returns one; Client.batch(id) finds one again by its id, from any process."""

    def __init__(self, r: Redis, settings: Settings, batch_id: str, size: int,
                 receipt: SubmitReceipt | None = None) -> None:  # fmt: skip
        self.id = batch_id
        self.size = size
        self.receipt = receipt  # Client.submit_file's: what it enqueued (a resume: `.resumed` says what it found)
        self._r = r
        self._settings = settings
        self._keys = Keys(settings.namespace)

    def __repr__(self) -> str:
        return f"Batch({self.id!r}, size={self.size})"

    def progress(self) -> BatchProgress:
        """The batch's outcome counters now (finished, failed, canceled, of size): one read."""
        return read_progress(self._r, self._keys, self.id)

    def wait(self, *, progress: bool = False, timeout_s: float | None = None) -> BatchProgress:
        """Block until every job ended (finished, failed or canceled) and return the final counts;
        failed jobs do not raise (see `failed`). With `progress`, a progress line on stderr. Past
        `timeout_s`, BatchTimeout (a TimeoutError) naming the batch; its jobs run on."""
        limit_s = math.inf if timeout_s is None else timeout_s
        deadline = time.monotonic() + limit_s
        line = ProgressLine(self.id, sys.stderr) if progress else None
        delay = POLL_MIN_S  # a short batch returns within milliseconds; a long one costs 5 reads/s
        try:
            while True:
                current = self.progress()
                if line:
                    line.show(current)
                if current.done:
                    return current
                left_s = deadline - time.monotonic()
                if left_s <= 0:
                    raise BatchTimeout(self.id, limit_s, size=current.size, finished=current.finished,
                                       failed=current.failed, canceled=current.canceled)  # fmt: skip
                time.sleep(min(delay, left_s))
                delay = min(2 * delay, POLL_MAX_S)
        finally:
            if line:
                line.close()

    def status(self) -> dict[str, Any]:
        """The `gpufleet status --batch B --json` record: queued, running and retrying now, the
        finished / failed / canceled counters, done, elapsed_s and eta_s (see README)."""
        return read_batch_status(self._r, self._keys, self.id).record(time.time())

    def results(self, *, wait: bool = False) -> Iterator[dict[str, Any]]:
        """One `gpufleet results` record per job, in submission order (README "Output formats").
        Without `wait`, each as it is now (a job not ended yet says queued or started); with
        `wait`, each as soon as its job ended, so a slow job holds back the records after it."""
        return self._records_as_they_end() if wait else iter_results(self._r, self._keys, self.id)

    def write_results(self, out: IO[str], *, errors: IO[str] | None = None, openai: bool = False,
                      follow: bool = False, drop_after_write: bool = False) -> WriteReport:  # fmt: skip
        """Write one JSON line per job to `out`, as `gpufleet results` does: the records, or with
        `openai` OpenAI batch output lines (failed requests to `errors` when given; jobs not ended
        left out); with `follow`, in the order the jobs end, until the batch is done; with
        `drop_after_write`, each ended job's rq data is deleted once its line is written and
        synced. Says how many lines it wrote and what it left out."""
        return write_results(self._r, self._keys, self.id, out, errors=errors, openai=openai, follow=follow,
                             drop_after_write=drop_after_write)  # fmt: skip

    def cancel(self, *, running: bool = False, wait_s: float | None = None) -> CancelReport:
        """Cancel the jobs that have not started (queued, or waiting to retry), as `gpufleet
        cancel` does; with `running`, stop the running ones on their nodes too (`cancel
        --running`), waiting up to `wait_s` (default: the stop grace plus two liveness TTLs; 0:
        do not wait) for them to end canceled. Ended jobs are left alone. Says how many of each."""
        return cancel(self._r, self._settings, self.id, running=running, wait_s=wait_s)

    def _records_as_they_end(self) -> Iterator[dict[str, Any]]:
        """Per poll one HGET, of the next job's status; once it ended, one pipeline reads the
        statuses of the next READ_CHUNK jobs and another the records of those that ended."""
        read_progress(self._r, self._keys, self.id)  # NotFound for an unknown batch, before the first poll
        cls, list_key = job_class(self._keys), self._keys.batch_jobs(self.id)
        start, delay = 0, POLL_MIN_S
        while ids := [as_text(i) for i in self._r.lrange(list_key, start, start + READ_CHUNK - 1)]:
            while ids:
                if not _has_ended(self._r.hget(Keys.rq_job(ids[0]), "status")):
                    time.sleep(delay)
                    delay = min(2 * delay, POLL_MAX_S)
                    continue
                with self._r.pipeline(transaction=False) as p:
                    for job_id in ids:
                        p.hget(Keys.rq_job(job_id), "status")
                    statuses = p.execute()
                n = next((i for i, s in enumerate(statuses) if not _has_ended(s)), len(ids))
                with self._r.pipeline(transaction=False) as p:
                    for job_id in ids[:n]:
                        p.hgetall(Keys.rq_job(job_id))
                        p.xrevrange(Keys.rq_results(job_id), "+", "-", count=1)
                    replies = p.execute()
                for job_id, raw, latest in zip(ids, replies[0::2], replies[1::2]):
                    yield result_record(self._r, cls, job_id, raw, latest)
                ids, start, delay = ids[n:], start + n, POLL_MIN_S


def _has_ended(status: bytes | str | None) -> bool:
    """Whether an rq status means the job will not run again; no HASH at all means it expired."""
    return status is None or as_text(status) in ENDED


class Client:
    """A connection to one fleet, for submitting batches and following them from Python.

    `Client()` takes its Redis URL and namespace from the environment (GPUFLEET_REDIS_URL,
    GPUFLEET_NAMESPACE, as the CLI does: Settings.from_env); `redis_url` and `namespace` override
    them, or those of `settings`. Redis is pinged at once: RedisUnavailable says so, with the
    password masked. Use it in a `with` block, or call close()."""

    def __init__(self, redis_url: str | None = None, *, namespace: str | None = None,
                 settings: Settings | None = None) -> None:  # fmt: skip
        base = settings if settings is not None else Settings.from_env()
        self.settings = base.with_overrides(redis_url=redis_url, namespace=namespace)
        self._r = connect(self.settings.redis_url)
        self._submitter = Submitter(self._r, self.settings)

    def __repr__(self) -> str:
        return f"Client({mask_url(self.settings.redis_url)!r}, namespace={self.settings.namespace!r})"

    @property
    def redis(self) -> Redis:
        """The redis-py client underneath, for what this API does not cover."""
        return self._r

    def submit(
        self,
        func: str,
        inputs: Iterable[Any],
        *,
        ids: Iterable[str | int] | None = None,
        model: str | None = None,
        affinity: str | None = None,
        priority: str = "normal",
        timeout_s: int | None = None,
        retries: int = 0,
        gpu_mem_gib: float = 0.0,
        batch: str | None = None,
        tenant: str | None = None,
        notify: str | None = None,
    ) -> Batch:
        """Submit one job per input, each calling `func` ("module:function", resolved on the
        worker, never imported here), as one batch; `ids` are your own ids, one per input.
        The options are JobSpec's, for every job; `batch` names the batch (default: a new id),
        `tenant` its tenant (default: settings.tenant, i.e. GPUFLEET_TENANT, else "default");
        with `notify` (an http or https URL, else SettingsError), the dispatcher POSTs the
        batch's summary there when it ends, as `submit --notify` has it (README).

        Every job is checked first, as a job file line is: JobFileError ("jobs:N: field ...",
        N counted from 1) and nothing enqueued. A list, tuple, range or other Collection is read
        twice (check, then enqueue) and never copied; any other iterable (a generator) is read
        into a list first, once, since every input is checked before the first is enqueued."""
        items = _collection(inputs)
        client_ids = None if ids is None else _collection(ids)
        if client_ids is not None and len(client_ids) != len(items):
            raise JobFileError("ids", 0, None, f"{len(client_ids)} ids for {len(items)} inputs")

        def specs() -> Iterator[JobSpec]:
            for value, client_id in zip(items, repeat(None) if client_ids is None else client_ids):
                yield JobSpec(func, value, _text_id(client_id), model, affinity, priority, timeout_s, retries,
                              gpu_mem_gib)  # fmt: skip

        return self._submit(specs, len(items), func if isinstance(func, str) else None, batch, tenant, notify)

    def submit_jobs(self, specs: Iterable[JobSpec], *, batch: str | None = None, tenant: str | None = None,
                    notify: str | None = None) -> Batch:  # fmt: skip
        """Submit JobSpecs, each with its own function and options, as one batch (of `tenant`):
        the same checks, the same reading of `specs` and the same `notify`, as submit."""
        items = _collection(specs)
        first = next(iter(items), None)
        return self._submit(lambda: items, len(items), first.func if first else None, batch, tenant, notify)

    def submit_file(self, path: str, *, format: str = "auto", func: str | None = None, priority: str = "normal",
                    retries: int | None = None, timeout_s: int | None = None, batch: str | None = None,
                    resume: bool = False, tenant: str | None = None, notify: str | None = None) -> Batch:  # fmt: skip
        """Submit a job file or an OpenAI batch file ('-': stdin) as one batch, as `gpufleet submit`
        does: `format` "auto" (OpenAI when the first line has custom_id, method, url and body),
        "jsonl" or "openai"; `func` for job file lines without one, `retries` (default 3) and
        `timeout_s` for OpenAI lines. Every line is checked first (JobFileError naming the line,
        nothing enqueued), reading the file twice in constant memory. With `resume`, an existing
        batch `batch` gets only what did not run to an end; the Batch's `receipt.resumed` says
        what it found (see README "OpenAI batch files on your own servers"). `notify` as in submit."""
        if notify is not None:
            check_notify_url(notify)
        receipt = submit_file(self._r, self.settings, path, default_func=func, default_priority=priority,
                              batch_id=batch, fmt=format, retries=retries, timeout_s=timeout_s, resume=resume,
                              tenant=tenant or self.settings.tenant)  # fmt: skip
        keys = Keys(self.settings.namespace)
        if notify is not None:
            set_notify(self._r, keys, receipt.batch_id, notify)
        size = read_progress(self._r, keys, receipt.batch_id).size
        return Batch(self._r, self.settings, receipt.batch_id, size, receipt)

    def map(
        self,
        func: str,
        inputs: Iterable[Any],
        *,
        model: str | None = None,
        affinity: str | None = None,
        priority: str = "normal",
        timeout_s: int | None = None,
        retries: int = 0,
        gpu_mem_gib: float = 0.0,
        batch: str | None = None,
        tenant: str | None = None,
    ) -> Iterator[Any]:
        """Submit `func` over `inputs` now, as submit does, and return an iterator of the return
        values in input order, like builtins.map and Executor.map: each next() blocks until that
        job ended, whatever order the fleet finishes them in. A job that failed (or was canceled,
        or expired) raises JobFailed there. Stopping early (break, an exception, JobFailed) cancels
        the jobs that have not started, as Executor.map does."""
        submitted = self.submit(func, inputs, model=model, affinity=affinity, priority=priority, timeout_s=timeout_s,
                                retries=retries, gpu_mem_gib=gpu_mem_gib, batch=batch, tenant=tenant)  # fmt: skip
        return _values_in_order(submitted)

    def batch(self, batch_id: str) -> Batch:
        """A batch submitted earlier (by any process), by its id; NotFound if there is none."""
        progress = read_progress(self._r, Keys(self.settings.namespace), batch_id)
        return Batch(self._r, self.settings, batch_id, progress.size)

    def close(self) -> None:
        """Close the connection to Redis."""
        self._r.close()

    def __enter__(self: C) -> C:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()

    def _submit(self, specs: Callable[[], Iterable[JobSpec]], size: int, func: str | None, batch: str | None,
                tenant: str | None, notify: str | None) -> Batch:  # fmt: skip
        if notify is not None:
            check_notify_url(notify)
        check_specs(specs())  # all of them, before anything is written
        batch_id = self._submitter.start_batch(batch, size, func, tenant or self.settings.tenant)
        if notify is not None:  # before any job is enqueued: the batch cannot end first
            set_notify(self._r, Keys(self.settings.namespace), batch_id, notify)
        return Batch(self._r, self.settings, batch_id, self._submitter.enqueue(specs(), batch_id))


def _values_in_order(batch: Batch) -> Iterator[Any]:
    """Client.map's iterator: the `result` of each record, in order; JobFailed for one without."""
    ended = 0
    try:
        for index, record in enumerate(batch.results(wait=True)):
            ended = index + 1
            if record["status"] != JobStatus.FINISHED.value:
                raise JobFailed(batch.id, index, record)
            yield record.get("result")
    finally:
        if ended < batch.size:  # the caller stopped early: nobody will read the rest
            try:
                report = batch.cancel()
                log.info("map stopped early batch=%s canceled=%d left=%d", batch.id, report.canceled, report.left)
            except (GpufleetError, redis.RedisError) as e:
                log.warning("map stopped early, cancel failed batch=%s error=%s", batch.id, e)


def _collection(values: Iterable[T]) -> Collection[T]:
    """`values`, readable twice and with a length (the batch size is recorded before the first
    job is): a Collection as it is, anything else read into a list."""
    if isinstance(values, Collection) and not isinstance(values, Iterator):
        return values
    return list(values)


def _text_id(client_id: Any) -> Any:
    """An integer id as its text (check_specs holds 7 and "7" to be the same id); anything else
    as given, for check_specs to accept or refuse."""
    return str(client_id) if isinstance(client_id, int) and not isinstance(client_id, bool) else client_id


class ProgressLine:
    """Batch.wait's progress on a stream: redrawn in place on a terminal; elsewhere (a log file,
    CI) a line at most once a second, so a long batch does not flood it."""

    WIDTH = 30

    def __init__(self, batch_id: str, stream: IO[str]) -> None:
        self._batch_id = batch_id
        self._stream = stream
        self._tty = stream.isatty()
        self._shown: BatchProgress | None = None
        self._shown_at = -math.inf

    def show(self, progress: BatchProgress) -> None:
        now = time.monotonic()
        if progress == self._shown or (not self._tty and not progress.done and now - self._shown_at < 1.0):
            return
        self._shown, self._shown_at = progress, now
        text = render_progress(self._batch_id, progress, self.WIDTH)
        self._stream.write(f"\r{text}" if self._tty else f"{text}\n")
        self._stream.flush()

    def close(self) -> None:
        if self._tty and self._shown is not None:
            self._stream.write("\n")
            self._stream.flush()


def render_progress(batch_id: str, p: BatchProgress, width: int = ProgressLine.WIDTH) -> str:
    """`b-... [#######-------] 40/100 finished=38 failed=2 canceled=0`"""
    ended = p.finished + p.failed + p.canceled
    filled = min(width, width * ended // p.size) if p.size else width
    return (f"{batch_id} [{'#' * filled}{'-' * (width - filled)}] {ended}/{p.size} "
            f"finished={p.finished} failed={p.failed} canceled={p.canceled}")  # fmt: skip
