"""What the web dashboard's pages show, as JSON-ready dicts read from Redis (its /api/ answers).

Every reader is bounded: a fleet's nodes are read as `status` reads them, batches a page at a
time from keys.batches, a batch's jobs a page at a time from its job list (a filter by status
or a search by id looks through at most SCAN_LIMIT jobs per request and says where it stopped,
so a 1,000,000-job batch is never loaded whole), and one job by its id.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from redis import Redis
from rq.results import Result
from rq.utils import as_text

from ...client.results import READ_CHUNK, batch_eta_s, progress_of, result_record
from ...errors import NotFound
from ...settings import Settings
from ...store.events import EventKind, EventReader
from ...store.job import SERIALIZER, job_class
from ...store.keys import JobField, Keys
from ..status import read_status

PAGE_SIZE = 50  # jobs or batches per page
SCAN_LIMIT = 20_000  # jobs a filtered or searched page looks through per request
INPUT_PREVIEW = 2_000  # characters of a job's input shown before "show all"
EVENTS_SCAN_LIMIT = 20_000  # events a job page looks through, from its enqueue on, for its attempts
JOB_EVENTS = (EventKind.JOB_STARTED, EventKind.JOB_RETRIED, EventKind.JOB_FINISHED, EventKind.JOB_FAILED,
              EventKind.JOB_CANCELED, EventKind.JOB_REQUEUED)  # fmt: skip
STATUSES = ("queued", "started", "scheduled", "finished", "failed", "canceled")

T = TypeVar("T")


class Shared(Generic[T]):
    """One read shared by every viewer: the last value, read again at most once per `ttl_s`."""

    def __init__(self, read: Callable[[], T], ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self._ttl_s, self._clock = read, ttl_s, clock
        self._lock = threading.Lock()
        self._value: T | None = None
        self._at = float("-inf")
        self.reads = 0  # how many times Redis was read (a test counts them)

    def get(self) -> T:
        with self._lock:
            if self._value is None or self._clock() - self._at >= self._ttl_s:
                self._value, self._at = self._read(), self._clock()
                self.reads += 1
            return self._value


def fleet_view(r: Redis, settings: Settings) -> dict[str, Any]:
    """The fleet page: the `status --json` record (nodes with their GPUs, the jobs waiting per
    priority, the tenants, live vs desired nodes)."""
    return read_status(r, Keys(settings.namespace), forget_dead_after_s=settings.forget_dead_after_s)


def batch_list(r: Redis, keys: Keys, page: int = 0, per_page: int = PAGE_SIZE) -> dict[str, Any]:
    """The batches page: newest first, `per_page` of them, with progress, throughput and ETA."""
    total = int(r.zcard(keys.batches))
    reply: list[tuple[bytes, float]]
    reply = r.zrevrange(keys.batches, page * per_page, (page + 1) * per_page - 1, withscores=True)  # type: ignore[assignment]
    with r.pipeline(transaction=False) as p:
        for batch_id, _ in reply:
            p.hgetall(keys.batch_info(as_text(batch_id)))
        infos = p.execute()
    now = time.time()
    rows = [_batch_row(as_text(b), float(at), raw, now) for (b, at), raw in zip(reply, infos) if raw]
    return {"page": page, "per_page": per_page, "total": total, "batches": rows}


def _batch_row(batch_id: str, created_at: float, raw: dict[bytes, bytes], now: float) -> dict[str, Any]:
    p = progress_of(raw)
    ended = p.finished + p.failed + p.canceled
    elapsed = max(now - created_at, 1e-3)
    eta = batch_eta_s(p, created_at, now)
    return {"batch": batch_id, "tenant": as_text(raw.get(b"tenant", b"default")), "size": p.size,
            "finished": p.finished, "failed": p.failed, "canceled": p.canceled, "ended": ended, "done": p.done,
            "created_at": created_at, "jobs_per_s": round((p.finished + p.failed) / elapsed, 3),
            "eta_s": None if eta is None else round(eta, 1)}  # fmt: skip


@dataclass(frozen=True)
class JobQuery:
    """A page of one batch's jobs: `status` keeps only jobs in it, `q` only the job whose own
    id is `q`, or whose job id starts with it."""

    status: str | None = None
    q: str | None = None
    page: int = 0
    per_page: int = PAGE_SIZE


def batch_page(r: Redis, keys: Keys, batch_id: str, query: JobQuery) -> dict[str, Any]:
    """One batch with a page of its jobs, in submission order. Unfiltered, the page is read
    by index (LRANGE); filtered, the jobs from index `page` on are looked through (`_scan`)
    until the page is full or SCAN_LIMIT jobs were looked at (`scanned_to` says where a next
    look goes on)."""
    raw: dict[bytes, bytes] = r.hgetall(keys.batch_info(batch_id))  # type: ignore[assignment]
    if not raw:
        raise NotFound(f"no batch {batch_id!r}")
    created_at = float(raw.get(b"created_at", 0) or 0)
    row = _batch_row(batch_id, created_at, raw, time.time())
    list_key = keys.batch_jobs(batch_id)
    filtered = bool(query.status or query.q)
    if filtered:
        ids, start = _scan(r, list_key, query)
    else:
        start = query.page * query.per_page
        ids = [as_text(i) for i in r.lrange(list_key, start, start + query.per_page - 1)]
    jobs = _records(r, keys, ids)
    return {"batch": row, "jobs": jobs, "query": {"status": query.status, "q": query.q, "page": query.page,
                                                  "per_page": query.per_page},
            "filtered": filtered, "scanned_to": start if filtered else None,
            "done_scanning": filtered and start >= row["size"]}  # fmt: skip


def _scan(r: Redis, list_key: str, query: JobQuery) -> tuple[list[str], int]:
    """The ids of up to `per_page` jobs that match, looking from index `page` on through at
    most SCAN_LIMIT jobs, reading only each job's status and own id; and where it stopped."""
    found: list[str] = []
    start = query.page
    end = start + SCAN_LIMIT
    while len(found) < query.per_page and start < end:
        ids = [as_text(i) for i in r.lrange(list_key, start, min(end, start + READ_CHUNK) - 1)]
        if not ids:
            break
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(Keys.rq_job(job_id), "status", JobField.CLIENT_ID)
            rows = p.execute()
        for job_id, (status, client_id) in zip(ids, rows):
            start += 1
            own = as_text(client_id) if client_id else job_id
            if query.status and (as_text(status) if status else "expired") != query.status:
                continue
            if query.q and own != query.q and not job_id.startswith(query.q):
                continue
            found.append(job_id)
            if len(found) == query.per_page:
                break
    return found, start


def _records(r: Redis, keys: Keys, ids: list[str]) -> list[dict[str, Any]]:
    """The `results` records of these jobs, in one pipelined round trip."""
    cls = job_class(keys)
    with r.pipeline(transaction=False) as p:
        for job_id in ids:
            p.hgetall(Keys.rq_job(job_id))
            p.xrevrange(Keys.rq_results(job_id), count=1)
        replies = p.execute()
    return [result_record(r, cls, job_id, replies[2 * i], replies[2 * i + 1]) for i, job_id in enumerate(ids)]


def job_view(r: Redis, keys: Keys, job_id: str, *, full_input: bool = False) -> dict[str, Any]:
    """One job: its `results` record, its input (the first INPUT_PREVIEW characters unless
    `full_input`), its batch, priority and tenant, the newest error's whole traceback, its
    attempts and timings."""
    raw: dict[bytes, bytes] = r.hgetall(Keys.rq_job(job_id))  # type: ignore[assignment]
    if not raw:
        raise NotFound(f"no job {job_id!r} (it never existed, or its data expired)")
    cls = job_class(keys)
    latest: list[Any] = r.xrevrange(Keys.rq_results(job_id), count=1)  # type: ignore[assignment]
    record = result_record(r, cls, job_id, raw, latest)
    job = cls(job_id, connection=r)
    job.restore(raw)
    text = _input_text(job)
    record["input"] = text if full_input else text[:INPUT_PREVIEW]
    record["input_truncated"] = not full_input and len(text) > INPUT_PREVIEW
    record["input_chars"] = len(text)
    record["func"] = job.func_name
    record["batch"] = job.fleet.get(JobField.BATCH) or None
    record["priority"] = job.fleet.get(JobField.PRIORITY) or "normal"
    record["tenant"] = job.fleet.get(JobField.TENANT) or None
    record["traceback"] = _traceback(r, job_id, latest)
    if record.get("error") and not record["traceback"]:
        record["traceback"] = record["error"]
    record["events"], record["events_complete"] = _job_events(r, keys, job_id, record["batch"], job.enqueued_at)
    return record


def _job_events(r: Redis, keys: Keys, job_id: str, batch: str | None, enqueued_at: Any) -> tuple[list[Any], bool]:
    """The job's attempts as the event stream has them (each start with its node, each retry,
    the end), from its enqueue on, looking through at most EVENTS_SCAN_LIMIT of its batch's
    events; and whether that covers them all (the scan reached the stream's end, and the stream
    still holds the job's enqueue time)."""
    since_ms = int(enqueued_at.timestamp() * 1000) if enqueued_at else 0
    reader = EventReader(r, keys, batch=batch, kinds=JOB_EVENTS, after=f"{max(0, since_ms - 1)}-0")
    events = [e.record() for e in reader.kept(limit=EVENTS_SCAN_LIMIT) if e.fields.get("job") == job_id]
    oldest: list[Any] = r.xrange(keys.events, "-", "+", count=1)  # type: ignore[assignment]
    kept_since = not oldest or int(as_text(oldest[0][0]).split("-")[0]) <= since_ms
    return events, reader.read < EVENTS_SCAN_LIMIT and kept_since


def _input_text(job: Any) -> str:
    try:
        args = job.args
    except Exception:  # a payload that is not JSON: say so, do not fail the page
        return "(the job's payload cannot be decoded)"
    return json.dumps(args[0] if len(args) == 1 else args, indent=2, ensure_ascii=False)


def _traceback(r: Redis, job_id: str, latest: list[Any]) -> str:
    """The newest failure's whole traceback ("" when the newest result is a success)."""
    if not latest:
        return ""
    result_id, payload = latest[0]
    result = Result.restore(job_id, as_text(result_id), payload, connection=r, serializer=SERIALIZER)
    return result.exc_string or "" if result.type != Result.Type.SUCCESSFUL else ""
