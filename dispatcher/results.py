"""Reads a batch back: per-job results (JSON-ready dicts) and the batch's progress counters."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from redis import Redis
from rq.utils import as_text
from rq.results import Result

from .errors import NotFound
from .job import SERIALIZER, BatchCounter, job_class
from .keys import JobField, Keys

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
    counts = {as_text(k): int(float(v)) for k, v in raw.items() if as_text(k) != "func"}
    return BatchProgress(
        size=counts.get(BatchCounter.SIZE, 0),
        finished=counts.get(BatchCounter.FINISHED, 0),
        failed=counts.get(BatchCounter.FAILED, 0),
        canceled=counts.get(BatchCounter.CANCELED, 0),
    )


def iter_results(r: Redis, keys: Keys, batch_id: str) -> Iterator[dict[str, Any]]:
    """One dict per job, in submission order (the stable `results` format, see README)."""
    read_progress(r, keys, batch_id)  # NotFound for an unknown batch
    cls = job_class(keys)
    list_key = keys.batch_jobs(batch_id)
    start = 0
    while ids := [as_text(i) for i in r.lrange(list_key, start, start + READ_CHUNK - 1)]:
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hgetall(Keys.rq_job(job_id))
                p.xrevrange(Keys.rq_results(job_id), "+", "-", count=1)
            replies = p.execute()
        for job_id, raw, latest in zip(ids, replies[0::2], replies[1::2]):
            yield _result_record(r, cls, job_id, raw, latest)
        start += READ_CHUNK


def _result_record(r: Redis, cls: Any, job_id: str, raw: dict[bytes, bytes], latest: list[Any]) -> dict[str, Any]:
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
