"""Operator actions: drain and undrain a node, cancel queued jobs, requeue failed ones."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from redis import Redis
from rq.utils import as_text

from ..errors import NotFound
from ..store.job import BatchCounter
from ..store.keys import PRIORITIES, JobField, Keys
from .node_claim import OPERATOR_DRAIN
from ..store.scripts import MOVED, Ending, JobPlace, Scripts
from ..settings import Settings

CHUNK = 500


def drain(r: Redis, keys: Keys, node_id: str) -> None:
    """Route nothing more to the node; the dispatcher hands its queued jobs back, and the
    job it runs finishes there."""
    _require_node(r, keys, node_id)
    r.set(keys.drain_flag(node_id), OPERATOR_DRAIN)


def undrain(r: Redis, keys: Keys, node_id: str) -> None:
    _require_node(r, keys, node_id)
    r.delete(keys.drain_flag(node_id))


def _require_node(r: Redis, keys: Keys, node_id: str) -> None:
    if not r.sismember(keys.nodes, node_id):
        known = sorted(as_text(n) for n in r.smembers(keys.nodes))
        raise NotFound(f"no node {node_id!r} (known: {', '.join(known) or 'none yet'})")


@dataclass(frozen=True)
class CancelReport:
    canceled: int  # queued or waiting to retry: now canceled
    left: int  # running or already ended: untouched


def _job_ids(r: Redis, keys: Keys, target: str) -> Iterator[list[str]]:
    """Chunks of job ids: the jobs of batch `target`, else the job whose id is `target`."""
    if r.exists(keys.batch_info(target)):
        start = 0
        while ids := [as_text(i) for i in r.lrange(keys.batch_jobs(target), start, start + CHUNK - 1)]:
            yield ids
            start += CHUNK
    elif r.exists(Keys.rq_job(target)):
        yield [target]
    else:
        raise NotFound(f"no batch or job {target!r}")


def cancel(r: Redis, settings: Settings, target: str) -> CancelReport:
    """Cancel every job of a batch (or one job) that has not started: queued in an ingress or a
    node queue, or waiting to retry. Running and ended jobs are left as they are."""
    keys = Keys(settings.namespace)
    scripts = Scripts(r, keys)
    canceled = left = 0
    for ids in _job_ids(r, keys, target):
        with r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(Keys.rq_job(job_id), "status", "origin", JobField.PRIORITY, JobField.BATCH)
            rows = [[(v or b"").decode() for v in row] for row in p.execute()]
        endings = []
        for job_id, (status, origin, priority, batch) in zip(ids, rows):
            if status == "queued":
                source = Keys.rq_queue(origin)
            elif status == "scheduled":
                source = keys.retry_schedule(priority or "normal")
            else:
                continue
            endings.append(Ending(JobPlace(job_id, source, batch), Keys.rq_canceled(origin), "canceled"))
        done = scripts.end_jobs(endings, status="canceled", counter=BatchCounter.CANCELED,
                                ttl_s=settings.result_ttl_s).count(MOVED)  # fmt: skip
        canceled += done
        left += len(ids) - done
    return CancelReport(canceled, left)


def requeue_failed(r: Redis, settings: Settings, batch_id: str | None = None) -> int:
    """Put failed jobs (the dead-letter queue of every node), or only batch `batch_id`'s, back
    at the end of their ingress; returns how many."""
    keys = Keys(settings.namespace)
    if batch_id is not None and not r.exists(keys.batch_info(batch_id)):
        raise NotFound(f"no batch {batch_id!r}")
    scripts = Scripts(r, keys)
    requeued = 0
    for node_id in sorted(as_text(n) for n in r.smembers(keys.nodes)):
        registry = Keys.rq_failed(keys.node_queue(node_id))
        ids = [as_text(j) for j in r.zrange(registry, 0, -1)]  # type: ignore[arg-type]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            with r.pipeline(transaction=False) as p:
                for job_id in chunk:
                    p.hmget(Keys.rq_job(job_id), JobField.PRIORITY, JobField.BATCH)
                rows = [[(v or b"").decode() for v in row] for row in p.execute()]
            for priority in PRIORITIES:
                places = [JobPlace(job_id, registry, batch) for job_id, (prio, batch) in zip(chunk, rows)
                          if (prio or "normal") == priority and (batch_id is None or batch == batch_id)]  # fmt: skip
                requeued += scripts.return_to_ingress(priority, places, at_front=False,
                                                      counter=BatchCounter.FAILED).count(MOVED)  # fmt: skip
    return requeued
