"""Reads a batch back: per-job results (JSON-ready dicts) and the batch's progress counters."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any

from redis import Redis, WatchError
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.results import Result
from rq.utils import as_text

from ..errors import NotFound
from ..store.job import SERIALIZER, BatchCounter, job_class
from ..store.keys import JobField, Keys
from .openai_batch import output_line

log = logging.getLogger(__name__)

READ_CHUNK = 500  # jobs per pipelined round trip


@dataclass(frozen=True)
class BatchProgress:
    """A batch's counts; `done` once every job reached a final state."""

    size: int
    finished: int
    failed: int
    canceled: int

    @property
    def done(self) -> bool:
        return self.finished + self.failed + self.canceled >= self.size


def read_progress(r: Redis, keys: Keys, batch_id: str) -> BatchProgress:
    raw = r.hgetall(keys.batch_info(batch_id))
    if not raw:
        raise NotFound(f"no batch {batch_id!r} (submit prints the id; `gpufleet status` lists none by name)")
    counters = (BatchCounter.SIZE, BatchCounter.FINISHED, BatchCounter.FAILED, BatchCounter.CANCELED)
    counts = {as_text(k): int(float(v)) for k, v in raw.items() if as_text(k) in counters}
    return BatchProgress(
        size=counts.get(BatchCounter.SIZE, 0),
        finished=counts.get(BatchCounter.FINISHED, 0),
        failed=counts.get(BatchCounter.FAILED, 0),
        canceled=counts.get(BatchCounter.CANCELED, 0),
    )


def iter_results(r: Redis, keys: Keys, batch_id: str) -> Iterator[dict[str, Any]]:
    """One dict per job, in submission order (the stable `results` format, see README)."""
    for chunk in submission_chunks(r, keys, batch_id):
        for _, record in chunk:
            yield record


Chunk = list[tuple[str, dict[str, Any]]]  # (job id, its `results` record), read in one round trip


def submission_chunks(r: Redis, keys: Keys, batch_id: str) -> Iterator[Chunk]:
    """Every job's record as it is now, in submission order, READ_CHUNK jobs per round trip."""
    read_progress(r, keys, batch_id)  # NotFound for an unknown batch
    cls = job_class(keys)
    list_key = keys.batch_jobs(batch_id)
    start = 0
    while ids := [as_text(i) for i in r.lrange(list_key, start, start + READ_CHUNK - 1)]:
        replies = _read_jobs(r, ids)
        yield [(job_id, result_record(r, cls, job_id, raw, latest)) for job_id, (raw, latest) in zip(ids, replies)]
        start += READ_CHUNK


def _read_jobs(r: Redis, ids: list[str]) -> list[tuple[dict[bytes, bytes], list[Any]]]:
    """Each job's HGETALL and newest Result (XREVRANGE count 1), in one pipeline."""
    with r.pipeline(transaction=False) as p:
        for job_id in ids:
            p.hgetall(Keys.rq_job(job_id))
            p.xrevrange(Keys.rq_results(job_id), "+", "-", count=1)
        replies = p.execute()
    return list(zip(replies[0::2], replies[1::2]))


def failed_records(r: Redis, keys: Keys, batch_id: str, limit: int) -> list[dict[str, Any]]:
    """The `results` records of the batch's first `limit` jobs that are failed now (or
    stopped), in the order they ended: its ended list is read READ_CHUNK ids per round trip
    until `limit` are found, so a batch with few failures is read through once."""
    cls, list_key = job_class(keys), keys.batch_ended(batch_id)
    found: dict[str, dict[str, Any]] = {}
    start = 0
    while len(found) < limit and (ids := [as_text(i) for i in r.lrange(list_key, start, start + READ_CHUNK - 1)]):
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hget(Keys.rq_job(job_id), "status")
            statuses = p.execute()
        failed = [j for j, s in zip(ids, statuses) if s in (b"failed", b"stopped") and j not in found]
        failed = list(dict.fromkeys(failed))[: limit - len(found)]  # a job that failed, was requeued and failed again
        for job_id, (raw, latest) in zip(failed, _read_jobs(r, failed)):
            found[job_id] = result_record(r, cls, job_id, raw, latest)
        start += READ_CHUNK
    return list(found.values())


_ENDED_FROM = JobField.ENDED_FROM.encode()
FINAL = frozenset(("finished", "failed", "canceled", "stopped"))  # rq statuses a job does not leave by itself


def follow_chunks(r: Redis, keys: Keys, batch_id: str, *, sleep: Callable[[float], None] = time.sleep,
                  poll_min_s: float = 0.01, poll_max_s: float = 0.2) -> Iterator[Chunk]:  # fmt: skip
    """Each job's record as soon as it has ended, in the order the jobs ended, until the batch
    is done. Reads the batch's ended list (keys.batch_ended: workers, cancel and the health loop
    push a job id with its final state) from where it left off, READ_CHUNK ids per round trip,
    so it never scans the batch; while nothing new has ended it polls, 10 ms doubling to 200 ms.
    Skipped: entries a resume undid (JobField.ENDED_FROM), and jobs not in a final state now (put back
    in the ingress since; their next ending comes later). A job whose data is gone is yielded
    as `expired`."""
    read_progress(r, keys, batch_id)  # NotFound for an unknown batch
    cls = job_class(keys)
    list_key = keys.batch_ended(batch_id)
    offset, delay = 0, poll_min_s
    while True:
        done = read_progress(r, keys, batch_id).done  # read before the list: an ending is pushed with its count
        ids = [as_text(i) for i in r.lrange(list_key, offset, offset + READ_CHUNK - 1)]
        if not ids:
            if done:
                return
            sleep(delay)
            delay = min(2 * delay, poll_max_s)
            continue
        chunk = []
        for index, (job_id, (raw, latest)) in enumerate(zip(ids, _read_jobs(r, ids)), offset):
            if raw and (int(raw.get(_ENDED_FROM, 0) or 0) > index or raw.get(b"status", b"").decode() not in FINAL):
                continue  # undone by a resume, or back in the ingress: its next ending comes later
            chunk.append((job_id, result_record(r, cls, job_id, raw, latest)))
        offset, delay = offset + len(ids), poll_min_s
        if chunk:
            yield chunk


def drop_jobs(r: Redis, job_ids: list[str], *, attempts: int = 3) -> int:
    """Delete the rq data of ended jobs: the job HASH, its Results stream, its execution records
    and its place in its queue's finished, failed and canceled registries. The batch keeps the
    job's id (in its job list and ended list) and its counters. A job that is not in a final
    state any more (a resume put it back) is left alone: the transaction WATCHes every job HASH
    and is tried again if one changed. Returns how many were dropped."""
    keys = [Keys.rq_job(job_id) for job_id in job_ids]
    for _ in range(attempts):
        with r.pipeline() as tx:
            tx.watch(*keys)  # type: ignore[no-untyped-call]
            with r.pipeline(transaction=False) as p:  # reads after the WATCH: a later change fails the EXEC
                for key, job_id in zip(keys, job_ids):
                    p.hmget(key, "status", "origin")
                    p.zrange(Keys.rq_executions(job_id), 0, -1)
                replies = p.execute()
            tx.multi()
            dropped = 0
            for job_id, (status, origin), executions in zip(job_ids, replies[0::2], replies[1::2]):
                if as_text(status) not in FINAL:
                    continue
                queue = as_text(origin) if origin else ""
                tx.delete(Keys.rq_job(job_id), Keys.rq_results(job_id), Keys.rq_executions(job_id),
                          *(Keys.rq_execution(job_id, as_text(e)) for e in executions))  # fmt: skip
                for registry in (FinishedJobRegistry, FailedJobRegistry, CanceledJobRegistry):
                    tx.zrem(registry(queue, connection=r).key, job_id)
                dropped += 1
            try:
                tx.execute()
                return dropped
            except WatchError:
                continue
    log.warning("results not dropped: the jobs kept changing jobs=%d", len(job_ids))
    return 0


@dataclass
class WriteReport:
    """What write_results wrote, and what it left out."""

    written: int = 0  # lines written, to `out` and `errors` together
    failed: int = 0  # of them, lines of failed requests (format openai)
    not_ended: int = 0  # jobs left out: not ended yet (format openai)
    gone: int = 0  # jobs left out: their data has left Redis (format openai)
    dropped: int = 0  # jobs whose rq data was deleted once their line was written


def write_results(r: Redis, keys: Keys, batch_id: str, out: IO[str], *, errors: IO[str] | None = None,
                  openai: bool = False, follow: bool = False, drop_after_write: bool = False,
                  sleep: Callable[[float], None] = time.sleep) -> WriteReport:  # fmt: skip
    """Write one JSON line per job of the batch to `out`: its `results` record, or with `openai`
    its OpenAI batch output line (openai_batch.output_line; failed requests to `errors` when
    given, and jobs not ended or gone left out). In submission order as the jobs are now, or
    with `follow` in the order they end, until the batch is done (follow_chunks). The streams
    are flushed after each chunk; with `drop_after_write` they are also fsynced, and only then
    is each written ended job's rq data deleted (drop_jobs): the file is its only copy."""
    report = WriteReport()
    chunks = follow_chunks(r, keys, batch_id, sleep=sleep) if follow else submission_chunks(r, keys, batch_id)
    for chunk in chunks:
        ended = []
        for job_id, record in chunk:
            stream, line = out, record
            if openai:
                shaped = output_line(record)
                if shaped is None:
                    if record["status"] == "expired":
                        report.gone += 1
                    else:
                        report.not_ended += 1
                    continue
                line, ok = shaped
                if not ok:
                    report.failed += 1
                    stream = errors or out
            stream.write(json.dumps(line) + "\n")
            report.written += 1
            if record["status"] in FINAL:
                ended.append(job_id)
        _flush(out, errors, sync=drop_after_write)
        if drop_after_write and ended:
            report.dropped += drop_jobs(r, ended)
    return report


def _flush(*streams: IO[str] | None, sync: bool) -> None:
    """Flush each stream; with `sync`, fsync it too (a pipe or a terminal cannot be: skipped)."""
    for stream in streams:
        if stream is None:
            continue
        stream.flush()
        if sync:
            with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):  # not a file: flushed is all
                os.fsync(stream.fileno())


def result_record(r: Redis, cls: Any, job_id: str, raw: dict[bytes, bytes], latest: list[Any]) -> dict[str, Any]:
    """One job's `results` record, from its HGETALL and its newest Result (XREVRANGE count 1)."""
    if not raw:
        return {"id": job_id, "status": "expired", "node": None, "error": "job data expired from Redis", "attempts": 0}
    job = cls(job_id, connection=r)
    job.restore(raw)
    record: dict[str, Any] = {
        "id": job.fleet.get(JobField.CLIENT_ID) or job_id,
        "job_id": job_id,
        "status": str(job.get_status(refresh=False).value),
        "node": job.fleet.get(JobField.NODE) or None,
    }
    if job.fleet.get(JobField.ERROR):  # gpufleet ended it (node lost, canceled) after any rq result
        record["error"] = job.fleet[JobField.ERROR]
    elif latest:
        result_id, payload = latest[0]
        result = Result.restore(job_id, result_id.decode(), payload, connection=r, serializer=SERIALIZER)
        if result.type == Result.Type.SUCCESSFUL:
            record["result"] = result.return_value
        else:
            record["error"] = last_line(result.exc_string or "")
    record["attempts"] = int(job.fleet.get(JobField.ATTEMPTS, "0") or 0)
    record["enqueued_at"] = _iso(job.enqueued_at)
    record["started_at"] = _iso(job.started_at)
    record["ended_at"] = _iso(job.ended_at)
    return record


def last_line(traceback_text: str) -> str:
    """The exception line of a traceback ("ValueError: bad input")."""
    lines = [line for line in traceback_text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _iso(dt: Any) -> str | None:
    return dt.isoformat().replace("+00:00", "Z") if dt else None


RECENT_BATCHES = 50  # how many of the newest batches `gpufleet top` looks through for ones in flight


@dataclass(frozen=True)
class BatchRow:
    """A batch as `gpufleet top` lists it: its counters and when it was created."""

    batch_id: str
    created_at: float  # unix time
    progress: BatchProgress


def batch_eta_s(progress: BatchProgress, created_at: float, now: float) -> float | None:
    """Seconds until the batch is done, at its finish rate since it was created: 0 once done,
    None while nothing has finished or failed yet (no rate to go by). Canceled jobs count as
    done but not in the rate: a cancel ends many jobs at once."""
    ended = progress.finished + progress.failed + progress.canceled
    if ended >= progress.size:
        return 0.0
    rate = (progress.finished + progress.failed) / max(now - created_at, 1e-3)
    return (progress.size - ended) / rate if rate > 0 else None


def progress_of(raw: dict[bytes, bytes]) -> BatchProgress:
    """A batch's counters from its HASH (HGETALL keys.batch_info)."""

    def count(name: str) -> int:
        return int(float(raw.get(name.encode(), 0)))

    return BatchProgress(count(BatchCounter.SIZE), count(BatchCounter.FINISHED), count(BatchCounter.FAILED),
                         count(BatchCounter.CANCELED))  # fmt: skip


def batches_in_flight(r: Redis, keys: Keys, limit: int = RECENT_BATCHES) -> list[BatchRow]:
    """The unfinished batches among the `limit` newest (newest first), in two round trips."""
    reply: list[tuple[bytes, float]]
    reply = r.zrevrange(keys.batches, 0, limit - 1, withscores=True)  # type: ignore[assignment]
    newest = [(as_text(b), float(at)) for b, at in reply]
    with r.pipeline(transaction=False) as p:
        for batch_id, _ in newest:
            p.hgetall(keys.batch_info(batch_id))
        infos = p.execute()
    rows = [BatchRow(b, at, progress_of(raw)) for (b, at), raw in zip(newest, infos) if raw]
    return [row for row in rows if not row.progress.done]


@dataclass(frozen=True)
class BatchStatus:
    """One batch in detail (`gpufleet status --batch B`): the outcome counters, what its
    unfinished jobs are doing right now, and an ETA."""

    row: BatchRow
    queued: int  # waiting in an ingress or a node queue
    running: int  # started on a node
    retrying: int  # an attempt failed; waiting out its retry backoff (rq's "scheduled")

    def record(self, now: float) -> dict[str, Any]:
        """The `status --batch B --json` object (see README)."""
        p, eta = self.row.progress, batch_eta_s(self.row.progress, self.row.created_at, now)
        return {
            "batch": self.row.batch_id, "size": p.size, "queued": self.queued, "running": self.running,
            "retrying": self.retrying, "finished": p.finished, "failed": p.failed, "canceled": p.canceled,
            "done": p.done, "created_at": _iso_unix(self.row.created_at),
            "elapsed_s": round(max(0.0, now - self.row.created_at), 3),
            "eta_s": None if eta is None else round(eta, 1),
        }  # fmt: skip


def read_batch_status(r: Redis, keys: Keys, batch_id: str) -> BatchStatus:
    """The batch's counters, then every job's rq status (one pipelined HGET per job, in chunks
    of READ_CHUNK): O(size) reads, for one batch on demand, never in a loop over batches."""
    raw = r.hgetall(keys.batch_info(batch_id))
    if not raw:
        raise NotFound(f"no batch {batch_id!r} (submit prints the id; `gpufleet top` lists those in flight)")
    row = BatchRow(batch_id, float(raw.get(b"created_at", 0) or 0), progress_of(raw))  # type: ignore[arg-type]
    seen: dict[str, int] = {}
    list_key = keys.batch_jobs(batch_id)
    start = 0
    while ids := r.lrange(list_key, start, start + READ_CHUNK - 1):
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hget(Keys.rq_job(as_text(job_id)), "status")
            for status in p.execute():
                word = as_text(status) if status else "expired"
                seen[word] = seen.get(word, 0) + 1
        start += READ_CHUNK
    return BatchStatus(row, queued=seen.get("queued", 0) + seen.get("deferred", 0) + seen.get("created", 0),
                       running=seen.get("started", 0), retrying=seen.get("scheduled", 0))  # fmt: skip


def _iso_unix(t: float) -> str | None:
    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z") if t else None
