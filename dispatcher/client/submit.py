"""The client API: submit jobs into the ingress queues, in pipelined chunks.

Everything is validated before anything is enqueued (invariant 4): `submit_file` reads the
file twice, once to validate and once to enqueue, so memory stays constant. A file is a job
file (jobfile.py) or an OpenAI batch file (openai_batch.py). `--resume` reads it against the
batch of that name, job by job in submission order, and enqueues only what did not run to an
end there (resume_batch).
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice, zip_longest
from pathlib import Path
from typing import IO, Any

from redis import Redis, WatchError
from rq.utils import as_text, now, utcformat

from ..errors import GpufleetError, JobFileError
from ..fleet.tenants import batch_tenant, check_room_to_queue, check_tenant
from ..routing.models import JobSpec
from ..settings import Settings
from ..store.job import BatchCounter, QueuedJobHash, func_path, wake_dispatcher
from ..store.keys import DEFAULT_TENANT, PRIORITIES, JobField, Keys
from ..store.scripts import MOVED, JobPlace, Lane, Scripts
from .jobfile import check_specs, count_jobs, numbered_jobs
from .openai_batch import DEFAULT_RETRIES, FORMATS, FORWARD_FUNC, count_requests, is_openai_line, read_requests
from .results import READ_CHUNK

log = logging.getLogger(__name__)

Progress = Callable[[int], None]  # called with the number of jobs just enqueued


@dataclass(frozen=True)
class ResumeReport:
    """What `submit --resume` found in the batch, job by job, and what it enqueued."""

    enqueued: int  # lines the batch did not have yet (an interrupted submit): enqueued now
    requeued_failed: int  # failed for good (refused, retries spent, node lost): back in the ingress
    requeued_canceled: int  # canceled before they ran: back in the ingress
    finished: int  # left alone
    in_flight: int  # queued, running or waiting to retry: left alone, they end by themselves
    gone: int  # their data had left Redis (expired, or dropped once written): left alone
    skipped: int = 0  # failed or canceled, but moved meanwhile (by `requeue --failed`): left alone


@dataclass(frozen=True)
class SubmitReceipt:
    """What one submission enqueued."""

    batch_id: str
    count: int  # jobs enqueued now (a resume: the missing ones and the ones put back)
    resumed: ResumeReport | None = None  # set when an existing batch was resumed


def new_job_ids(n: int) -> list[str]:
    """n random job ids in rq's format (32 hex digits, as uuid4().hex), from one urandom call."""
    blob = secrets.token_hex(16 * n)
    return [blob[i : i + 32] for i in range(0, 32 * n, 32)]


def new_batch_id() -> str:
    """A sortable, unique batch id: b-YYYYmmdd-HHMMSS-xxxxxx (UTC)."""
    return time.strftime("b-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


class Submitter:
    """Enqueues validated JobSpecs as rq jobs waiting in the ingress of their priority."""

    def __init__(self, r: Redis, settings: Settings) -> None:
        self._r = r
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._scripts = Scripts(r, self._keys)

    def start_batch(self, batch_id: str | None, size: int, func: str | None, tenant: str = DEFAULT_TENANT) -> str:
        """Claim a batch id (a new one when None) for `tenant`; a name already in use is refused,
        and so is a batch that would leave more of the tenant's jobs waiting than its quota."""
        batch_id = batch_id or new_batch_id()
        check_room_to_queue(self._r, self._keys, check_tenant(tenant), size)
        if not self._scripts.start_batch(batch_id, size, func or "", time.time(), tenant):
            raise GpufleetError(f"batch {batch_id!r} already exists; choose another --batch name")
        return batch_id

    def enqueue(self, specs: Iterable[JobSpec], batch_id: str, progress: Progress | None = None) -> int:
        """Enqueue every spec (already validated) in chunks of one pipelined round trip each:
        per chunk, one HSET per job, then one RPUSH of the chunk's ids onto the batch's lane of
        each priority it uses (registered in that priority's lanes after the push, so the
        dispatcher never forgets a lane with jobs) and one onto the batch's list (ids only ever
        point at a job HASH that already exists)."""
        tenant = batch_tenant(self._r, self._keys, batch_id)
        hashes = QueuedJobHash(self._keys, batch_id, self._settings.result_ttl_s, tenant=tenant)
        batch_jobs = self._keys.batch_jobs(batch_id)
        total = 0
        it = iter(specs)
        while chunk := list(islice(it, self._settings.submit_chunk)):
            ids = new_job_ids(len(chunk))
            stamp = utcformat(now())  # created_at = enqueued_at: the chunk goes in one round trip
            queued: dict[str, list[str]] = {}
            with self._r.pipeline(transaction=False) as p:
                for job_id, spec in zip(ids, chunk):
                    key, fields = hashes.build(job_id, spec, stamp)
                    p.hset(key, items=fields)
                    queued.setdefault(spec.priority, []).append(job_id)
                for priority, job_ids in queued.items():
                    p.rpush(Keys.rq_queue(self._keys.lane_queue(priority, batch_id)), *job_ids)
                    p.hset(self._keys.lanes(priority), batch_id, tenant)
                p.rpush(batch_jobs, *ids)
                wake_dispatcher(p, self._keys)
                p.execute()
            total += len(chunk)
            if progress:
                progress(len(chunk))
        return total

    def submit(self, specs: Sequence[JobSpec], batch_id: str | None = None,
               tenant: str = DEFAULT_TENANT) -> SubmitReceipt:  # fmt: skip
        """Python API: check every spec as a job file line is checked (a JobFileError naming the
        spec's number and field), then enqueue them all as one batch of `tenant`."""
        check_specs(specs)
        batch_id = self.start_batch(batch_id, len(specs), specs[0].func if specs else None, tenant)
        return SubmitReceipt(batch_id, self.enqueue(specs, batch_id))


@contextmanager
def open_job_source(path: str) -> Iterator[tuple[IO[bytes], str]]:
    """A seekable binary stream for `path` ('-' spools stdin to a temp file) and its name."""
    if path == "-":
        with tempfile.TemporaryFile() as spool:
            while block := sys.stdin.buffer.read(1 << 20):
                spool.write(block)
            spool.seek(0)
            yield spool, "<stdin>"
        return
    try:
        stream = Path(path).open("rb")  # noqa: SIM115 (closed by the with below, so only open()'s OSError is caught)
    except OSError as e:
        raise JobFileError(path, 0, None, f"cannot open: {e.strerror}") from None
    with stream:
        yield stream, path


@dataclass(frozen=True)
class FileFormat:
    """How to read one kind of file, each line checked: `count` every line (the first pass, which
    raises the JobFileError), `read` (line number, JobSpec) each; the batch's func, and the field
    that names a line's id in messages."""

    name: str
    count: Callable[[IO[bytes]], int]
    read: Callable[[IO[bytes]], Iterator[tuple[int, JobSpec]]]
    func: str | None
    id_field: str


def file_format(stream: IO[bytes], source: str, fmt: str = "auto", *, default_func: str | None = None,
                default_priority: str = "normal", retries: int | None = None,
                timeout_s: int | None = None) -> FileFormat:  # fmt: skip
    """The reader for `stream`: `fmt` "jsonl" (a job file), "openai" (an OpenAI batch file), or
    "auto": openai when the first line has custom_id, method, url and body (every line must
    then be one), else jsonl. `default_func` is for job file lines only; `retries` (default 3)
    and `timeout_s` for OpenAI lines only (a job file line says its own)."""
    if fmt not in FORMATS:
        raise JobFileError(source, 0, None, f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if default_priority not in PRIORITIES:
        raise JobFileError(source, 0, "priority", f"{default_priority!r} is not one of {', '.join(PRIORITIES)}")
    if fmt == "openai" or (fmt == "auto" and is_openai_line(stream)):
        if default_func is not None:
            raise JobFileError(source, 0, None, "--func is for job file lines; an OpenAI batch line is a request "
                                                "that a forwarder node sends to its server")  # fmt: skip
        if retries is not None and (isinstance(retries, bool) or not isinstance(retries, int) or retries < 0):
            raise JobFileError(source, 0, "retries", "must be an integer >= 0")
        if timeout_s is not None and (isinstance(timeout_s, bool) or not isinstance(timeout_s, int) or timeout_s < 1):
            raise JobFileError(source, 0, "timeout", "must be an integer >= 1 (seconds)")
        read = partial(read_requests, source=source, priority=default_priority,
                       retries=DEFAULT_RETRIES if retries is None else retries, timeout_s=timeout_s)  # fmt: skip
        return FileFormat("openai", partial(count_requests, source=source), read, FORWARD_FUNC, "custom_id")
    if retries is not None or timeout_s is not None:
        raise JobFileError(source, 0, None, "--retries and --timeout are for OpenAI batch lines; a job file line "
                                            "says its own 'retries' and 'timeout'")  # fmt: skip
    count = partial(count_jobs, source=source, default_func=default_func, default_priority=default_priority)
    read = partial(numbered_jobs, source=source, default_func=default_func, default_priority=default_priority)
    return FileFormat("jsonl", count, read, default_func, "id")


def submit_file(
    r: Redis,
    settings: Settings,
    path: str,
    *,
    default_func: str | None = None,
    default_priority: str = "normal",
    batch_id: str | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
    fmt: str = "auto",
    retries: int | None = None,
    timeout_s: int | None = None,
    resume: bool = False,
    tenant: str = DEFAULT_TENANT,
) -> SubmitReceipt:
    """Validate every line of a job file or an OpenAI batch file (`fmt`, see file_format), then
    enqueue them all as one batch of `tenant`. `progress_factory(total)` returns the callback that
    reports enqueue progress. With `resume`, a batch `batch_id` that exists already is resumed
    (resume_batch) instead of refused; one that does not is submitted as usual."""
    if resume and not batch_id:
        raise GpufleetError("--resume needs --batch NAME: the batch to resume")
    with open_job_source(path) as (stream, source):
        kind = file_format(stream, source, fmt, default_func=default_func, default_priority=default_priority,
                           retries=retries, timeout_s=timeout_s)  # fmt: skip
        stream.seek(0)
        total = kind.count(stream)
        if total == 0:
            raise JobFileError(source, 0, None, "no jobs in the file")
        if resume and batch_id and r.exists(Keys(settings.namespace).batch_info(batch_id)):
            return resume_batch(r, settings, batch_id, stream, source, kind, total, progress_factory)
        submitter = Submitter(r, settings)
        batch_id = submitter.start_batch(batch_id, total, kind.func, tenant)
        progress = progress_factory(total) if progress_factory else None
        stream.seek(0)
        jobs = (spec for _, spec in kind.read(stream))
        return SubmitReceipt(batch_id, submitter.enqueue(jobs, batch_id, progress))


_IN_FLIGHT = frozenset(("queued", "started", "scheduled", "deferred", "created"))  # they end by themselves
_REQUEUE = {"failed": BatchCounter.FAILED, "stopped": BatchCounter.FAILED, "canceled": BatchCounter.CANCELED}


def resume_batch(r: Redis, settings: Settings, batch_id: str, stream: IO[bytes], source: str, kind: FileFormat,
                 total: int, progress_factory: Callable[[int], Progress] | None = None) -> SubmitReceipt:  # fmt: skip
    """Enqueue what of the file the batch has not run to an end, the file already checked.

    Line i of the file is job i of the batch (submit enqueues in file order), so the file is
    read beside the batch's job list, READ_CHUNK jobs per round trip, in constant memory. First
    pass: each job must have the line's id and the line's request (its func and input), else a
    JobFileError naming the line and nothing is done; a batch with more jobs than the file has
    lines is refused too. Then: jobs that failed for good or were canceled go back to the end of
    their ingress (return_to_ingress, which takes them out of their failed or canceled registry
    and decrements that counter, so they do not count twice), with a fresh retry budget; lines
    past the batch's last job (an interrupted submit) are enqueued, and the batch's size becomes
    the file's. Finished jobs, jobs still queued, running or waiting to retry, and jobs whose
    data has left Redis are left alone. Run one resume of a batch at a time."""
    keys = Keys(settings.namespace)
    stream.seek(0)
    found, existing = _check_against_batch(r, keys, batch_id, kind.read(stream), source, kind.id_field)
    requeued, skipped = _requeue_ended(r, settings, keys, batch_id, existing)
    if r.llen(keys.batch_jobs(batch_id)) != existing:
        back = sum(requeued.values())
        raise GpufleetError(f"batch {batch_id!r} changed while it was resumed (another submit to it?); {back} "
                            "job(s) were put back, no line was added: resume again")  # fmt: skip
    r.hset(keys.batch_info(batch_id), BatchCounter.SIZE, total)
    missing = total - existing
    progress = progress_factory(missing) if progress_factory and missing else None
    stream.seek(0)
    rest = (spec for _, spec in islice(kind.read(stream), existing, None))
    enqueued = Submitter(r, settings).enqueue(rest, batch_id, progress)
    report = ResumeReport(enqueued=enqueued, requeued_failed=requeued[BatchCounter.FAILED],
                          requeued_canceled=requeued[BatchCounter.CANCELED], finished=found["finished"],
                          in_flight=found["in_flight"], gone=found["gone"], skipped=skipped)  # fmt: skip
    log.debug("batch resumed batch=%s enqueued=%d requeued_failed=%d requeued_canceled=%d finished=%d in_flight=%d "
             "gone=%d skipped=%d", batch_id, enqueued, report.requeued_failed, report.requeued_canceled,
             report.finished, report.in_flight, report.gone, skipped)  # fmt: skip
    return SubmitReceipt(batch_id, enqueued + sum(requeued.values()), report)


def _stored(r: Redis, keys: Keys, batch_id: str, fields: Sequence[str],
            limit: int | None = None) -> Iterator[tuple[str, list[Any]]]:  # fmt: skip
    """(job id, HMGET of `fields`) per job of the batch, in submission order (the first `limit`)."""
    start = 0
    while limit is None or start < limit:
        stop = start + READ_CHUNK if limit is None else min(start + READ_CHUNK, limit)
        ids = [as_text(i) for i in r.lrange(keys.batch_jobs(batch_id), start, stop - 1)]
        if not ids:
            return
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(Keys.rq_job(job_id), *fields)
            yield from zip(ids, p.execute())
        start = stop


def _check_against_batch(r: Redis, keys: Keys, batch_id: str, lines: Iterator[tuple[int, JobSpec]], source: str,
                         id_field: str) -> tuple[Counter[str], int]:  # fmt: skip
    """The first pass of a resume: the batch's jobs by state, and how many it has."""
    found: Counter[str] = Counter()
    existing = 0
    for line, row in zip_longest(lines, _stored(r, keys, batch_id, ("status", JobField.CLIENT_ID, "data"))):
        if row is None:
            break  # the lines from here are the ones the batch does not have
        existing += 1
        if line is None:
            raise JobFileError(source, 0, None, f"batch {batch_id!r} has more jobs than the file has lines: --resume "
                                                "needs the file that was submitted")  # fmt: skip
        (line_no, spec), (status, client_id, data) = line, row[1]
        if data is None:
            found["gone"] += 1  # expired, or dropped once written: nothing to compare, nothing to redo
            continue
        stored_id = client_id.decode() if client_id else None
        if stored_id != spec.client_id:
            raise JobFileError(source, line_no, id_field, f"{spec.client_id!r}, but job {existing} of batch "
                               f"{batch_id!r} is {stored_id!r}: --resume needs the file that was submitted, in its "
                               "order")  # fmt: skip
        if not _same_request(data, spec):
            raise JobFileError(source, line_no, None, f"request {spec.client_id or existing!r} is not the one batch "
                               f"{batch_id!r} holds: --resume needs the file that was submitted (submit changed "
                               "requests as a new batch)")  # fmt: skip
        word = as_text(status) or ""
        found["in_flight" if word in _IN_FLIGHT else "finished" if word == "finished" else word] += 1
    return found, existing


def _same_request(data: bytes, spec: JobSpec) -> bool:
    """Whether a job's stored payload (rq's zlib-compressed JSON call) is `spec`'s call."""
    try:
        stored = json.loads(zlib.decompress(data))
    except (zlib.error, ValueError):
        return False
    return bool(stored == [func_path(spec.func), None, [spec.input], {}])


def _requeue_ended(r: Redis, settings: Settings, keys: Keys, batch_id: str,
                   existing: int) -> tuple[Counter[str], int]:  # fmt: skip
    """Put the batch's failed and canceled jobs back at the end of their lane (they wait their
    tenant's turn again); (how many per batch counter, how many had moved meanwhile)."""
    scripts = Scripts(r, keys)
    lane = Lane(batch_id, batch_tenant(r, keys, batch_id))
    requeued: Counter[str] = Counter()
    skipped = 0
    rows = _stored(r, keys, batch_id, ("status", "origin", JobField.PRIORITY), limit=existing)
    while chunk := list(islice(rows, READ_CHUNK)):
        ended = []
        for job_id, row in chunk:
            status, origin, priority = (as_text(v) if v else "" for v in row)
            if status in _REQUEUE:
                ended.append((job_id, status, origin, priority))
        ended = _ready_to_rerun(r, keys, batch_id, ended)
        groups: dict[tuple[str, str], list[JobPlace]] = {}
        for job_id, status, origin, priority in ended:
            registry = Keys.rq_canceled(origin) if status == "canceled" else Keys.rq_failed(origin)
            groups.setdefault((priority or "normal", _REQUEUE[status]), []).append(JobPlace(job_id, registry, batch_id))
        for (priority, counter), places in groups.items():
            flags = scripts.return_to_ingress(priority, places, at_front=False, counter=counter, lane=lane)
            requeued[counter] += flags.count(MOVED)
            skipped += len(flags) - flags.count(MOVED)
    if requeued:
        with r.pipeline(transaction=False) as p:
            wake_dispatcher(p, keys)
            p.execute()
    return requeued, skipped


def _ready_to_rerun(r: Redis, keys: Keys, batch_id: str, jobs: list[tuple[str, str, str, str]],
                    tries: int = 3) -> list[tuple[str, str, str, str]]:  # fmt: skip
    """Mark ended jobs for a new run, in one transaction that WATCHes them: a fresh retry budget
    (attempts 0), no gpufleet error, and JobField.ENDED_FROM, the ended list's length now (the entries
    before it are the ending being undone). Returns the jobs still in the state they were read
    in; only those go back (a job HASH that vanished meanwhile is not made again by HSET)."""
    if not jobs:
        return []
    job_keys = [Keys.rq_job(job_id) for job_id, *_ in jobs]
    for _ in range(tries):
        with r.pipeline() as tx:
            tx.watch(*job_keys)  # type: ignore[no-untyped-call]
            with r.pipeline(transaction=False) as p:  # read after the WATCH: a change since fails the EXEC
                for key in job_keys:
                    p.hget(key, "status")
                p.llen(keys.batch_ended(batch_id))
                *statuses, ended_len = p.execute()
            still = [job for job, status in zip(jobs, statuses) if status is not None and as_text(status) == job[1]]
            tx.multi()
            for job_id, *_ in still:
                tx.hset(Keys.rq_job(job_id), mapping={JobField.ENDED_FROM: ended_len, JobField.ATTEMPTS: 0})
                tx.hdel(Keys.rq_job(job_id), JobField.ERROR)
            try:
                tx.execute()
                return still
            except WatchError:
                continue
    raise GpufleetError(f"batch {batch_id!r}: its ended jobs kept changing while they were resumed; resume again")
