"""The client API: submit jobs into the ingress queues, in pipelined chunks.

Everything is validated before anything is enqueued (invariant 4): `submit_file` reads the
file twice, once to validate and once to enqueue, so memory stays constant.
"""

from __future__ import annotations

import secrets
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO

from redis import Redis
from rq.job import JobStatus
from rq.utils import now

from .errors import GpufleetError, JobFileError
from .job import SERIALIZER, BatchCounter, job_class, wake_dispatcher
from .jobfile import check_func, func_path, read_jobs
from .keys import RQ_QUEUES, JobField, Keys
from .models import JobSpec
from .settings import Settings

Progress = Callable[[int], None]  # called with the number of jobs just enqueued


@dataclass(frozen=True)
class SubmitReceipt:
    """What one submission enqueued."""

    batch_id: str
    count: int


def new_batch_id() -> str:
    """A sortable, unique batch id: b-YYYYmmdd-HHMMSS-xxxxxx (UTC)."""
    return time.strftime("b-%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


class Submitter:
    """Enqueues validated JobSpecs as rq jobs waiting in the ingress of their priority."""

    def __init__(self, r: Redis, settings: Settings) -> None:
        self._r = r
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._job_class = job_class(self._keys)

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
        """Enqueue every spec (already validated) in chunks of one pipelined round trip each."""
        total = 0
        it = iter(specs)
        while chunk := list(islice(it, self._settings.submit_chunk)):
            with self._r.pipeline(transaction=False) as p:
                for spec in chunk:
                    self._stage(p, spec, batch_id)
                for priority in {spec.priority for spec in chunk}:
                    p.sadd(RQ_QUEUES, Keys.rq_queue(self._keys.ingress_queue(priority)))
                wake_dispatcher(p, self._keys)
                p.execute()
            total += len(chunk)
            if progress:
                progress(len(chunk))
        return total

    def _stage(self, p: object, spec: JobSpec, batch_id: str) -> None:
        ingress = self._keys.ingress_queue(spec.priority)
        job = self._job_class.create(
            func_path(spec.func),
            args=[spec.input],
            connection=self._r,
            id=uuid.uuid4().hex,
            origin=ingress,
            timeout=spec.timeout_s or 180,
            result_ttl=self._settings.result_ttl_s,
            failure_ttl=self._settings.result_ttl_s,
            description=spec.func,
            status=JobStatus.QUEUED,
            serializer=SERIALIZER,
        )
        job.enqueued_at = now()
        mapping = job.to_dict()
        mapping.update(
            {
                JobField.BATCH: batch_id,
                JobField.CLIENT_ID: spec.client_id or "",
                JobField.PRIORITY: spec.priority,
                JobField.MODEL: spec.model or "",
                JobField.AFFINITY: spec.affinity or "",
                JobField.GPU_MEM: spec.gpu_mem_gib,
                JobField.ATTEMPTS: 0,
                JobField.RETRIES: spec.retries,
            }
        )
        p.hset(job.key, mapping=mapping)  # type: ignore[attr-defined]
        p.rpush(Keys.rq_queue(ingress), job.id)  # type: ignore[attr-defined]
        p.rpush(self._keys.batch_jobs(batch_id), job.id)  # type: ignore[attr-defined]

    def submit(self, specs: Sequence[JobSpec], batch_id: str | None = None) -> SubmitReceipt:
        """Python API: validate every spec's function, then enqueue them all as one batch."""
        for i, spec in enumerate(specs, 1):
            if (why := check_func(spec.func)) is not None:
                raise JobFileError("jobs", i, "func", why)
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
        stream = Path(path).open("rb")
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

        def jobs() -> Iterator[JobSpec]:
            stream.seek(0)
            return read_jobs(stream, source=source, default_func=default_func, default_priority=default_priority)

        total = sum(1 for _ in jobs())
        if total == 0:
            raise JobFileError(source, 0, None, "no jobs in the file")
        submitter = Submitter(r, settings)
        batch_id = submitter.start_batch(batch_id, total, default_func)
        progress = progress_factory(total) if progress_factory else None
        return SubmitReceipt(batch_id, submitter.enqueue(jobs(), batch_id, progress))
