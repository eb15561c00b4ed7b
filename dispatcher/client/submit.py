"""The client API: submit jobs into the ingress queues, in pipelined chunks.

Everything is validated before anything is enqueued (invariant 4): `submit_file` reads the
file twice, once to validate and once to enqueue, so memory stays constant.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO

from redis import Redis
from rq.utils import now, utcformat

from ..errors import GpufleetError, JobFileError
from ..routing.models import JobSpec
from ..settings import Settings
from ..store.job import BatchCounter, QueuedJobHash, wake_dispatcher
from ..store.keys import RQ_QUEUES, Keys
from .jobfile import check_specs, count_jobs, read_jobs

Progress = Callable[[int], None]  # called with the number of jobs just enqueued


@dataclass(frozen=True)
class SubmitReceipt:
    """What one submission enqueued."""

    batch_id: str
    count: int


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

    def start_batch(self, batch_id: str | None, size: int, func: str | None) -> str:
        """Claim a batch id (a new one when None); a name already in use is refused."""
        batch_id = batch_id or new_batch_id()
        created = self._r.hsetnx(self._keys.batch_info(batch_id), BatchCounter.SIZE, size)
        if not created:
            raise GpufleetError(f"batch {batch_id!r} already exists; choose another --batch name")
        self._r.hset(self._keys.batch_info(batch_id), mapping={"created_at": time.time(), "func": func or ""})
        self._r.zadd(self._keys.batches, {batch_id: time.time()})  # lets `gpufleet top` list batches
        return batch_id

    def enqueue(self, specs: Iterable[JobSpec], batch_id: str, progress: Progress | None = None) -> int:
        """Enqueue every spec (already validated) in chunks of one pipelined round trip each:
        per chunk, one HSET per job, then one RPUSH of the chunk's ids per ingress it uses and
        one onto the batch's list (ids only ever point at a job HASH that already exists)."""
        hashes = QueuedJobHash(self._keys, batch_id, self._settings.result_ttl_s)
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
                    queue = Keys.rq_queue(self._keys.ingress_queue(priority))
                    p.rpush(queue, *job_ids)
                    p.sadd(RQ_QUEUES, queue)
                p.rpush(batch_jobs, *ids)
                wake_dispatcher(p, self._keys)
                p.execute()
            total += len(chunk)
            if progress:
                progress(len(chunk))
        return total

    def submit(self, specs: Sequence[JobSpec], batch_id: str | None = None) -> SubmitReceipt:
        """Python API: check every spec as a job file line is checked (a JobFileError naming the
        spec's number and field), then enqueue them all as one batch."""
        check_specs(specs)
        batch_id = self.start_batch(batch_id, len(specs), specs[0].func if specs else None)
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


def submit_file(
    r: Redis,
    settings: Settings,
    path: str,
    *,
    default_func: str | None = None,
    default_priority: str = "normal",
    batch_id: str | None = None,
    progress_factory: Callable[[int], Progress] | None = None,
) -> SubmitReceipt:
    """Validate every line of a JSON Lines job file, then enqueue them all as one batch.
    `progress_factory(total)` returns the callback that reports enqueue progress."""
    with open_job_source(path) as (stream, source):

        stream.seek(0)
        total = count_jobs(stream, source=source, default_func=default_func, default_priority=default_priority)
        if total == 0:
            raise JobFileError(source, 0, None, "no jobs in the file")
        submitter = Submitter(r, settings)
        batch_id = submitter.start_batch(batch_id, total, default_func)
        progress = progress_factory(total) if progress_factory else None
        stream.seek(0)
        jobs = read_jobs(stream, source=source, default_func=default_func, default_priority=default_priority)
        return SubmitReceipt(batch_id, submitter.enqueue(jobs, batch_id, progress))
