"""Operator actions: drain, undrain and forget a node, cancel queued jobs, requeue failed ones."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from redis import Redis, WatchError
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.utils import as_text

from ..errors import GpufleetError, NotFound
from ..settings import Settings
from ..store.job import BatchCounter
from ..store.keys import PRIORITIES, RQ_QUEUES, JobField, Keys
from ..store.scripts import MOVED, Ending, JobPlace, Scripts
from .health import Leftovers, requeue_node
from .node_claim import OPERATOR_DRAIN

CHUNK = 500


def drain(r: Redis, keys: Keys, node_id: str) -> None:
    """Route nothing more to the node; the dispatcher hands its queued jobs back, and the
    job it runs finishes there."""
    _require_node(r, keys, node_id)
    r.set(keys.drain_flag(node_id), OPERATOR_DRAIN)


def undrain(r: Redis, keys: Keys, node_id: str) -> None:
    _require_node(r, keys, node_id)
    r.delete(keys.drain_flag(node_id))


@dataclass(frozen=True)
class ForgetReport:
    node: str
    requeued: int  # jobs it held (queued, or taken and not started) handed back to the ingress
    retried: int  # jobs it was running, sent to run again elsewhere
    failed: int  # jobs it was running, past their retry limit: failed ("node <id> lost")
    failed_kept: int  # jobs in its dead-letter queue, kept for `gpufleet requeue --failed`


def forget_node(r: Redis, settings: Settings, node_id: str) -> ForgetReport:
    """Remove a dead node from Redis: its heartbeat, its place in the nodes set, its drain and
    eject flags, its held lists and wake-up list, and its (emptied) queue.

    A live node is refused (GpufleetError): its worker would only register it again. The jobs
    it still has are handed back first, as the dispatcher does for a dead node (queued and
    taken ones to the front of their ingress, running ones retried or failed), and the keys
    go in one transaction that fails if the node came back or a job reached it meanwhile
    (refused; nothing removed). rq's records of the jobs it ended stay: its queue's finished,
    failed and canceled registries, and, while any of them holds a job, the queue in rq's
    queue set, so `requeue --failed`, `rq info` and rq-dashboard still find them."""
    keys = Keys(settings.namespace)
    _require_node(r, keys, node_id)
    _refuse_live(r, keys, node_id)
    back = requeue_node(r, keys, Scripts(r, keys), settings, node_id, Leftovers(queued=True))
    queue = keys.node_queue(node_id)
    lists = [Keys.rq_queue(queue), Keys.rq_intermediate(queue)]
    ended = [FailedJobRegistry(queue, connection=r).key, FinishedJobRegistry(queue, connection=r).key,
             CanceledJobRegistry(queue, connection=r).key]  # fmt: skip
    with r.pipeline() as p:
        try:
            p.watch(keys.alive(node_id), keys.held_lists(node_id), Keys.rq_started(queue), *lists)  # type: ignore[no-untyped-call]
            held = sorted(as_text(k) for k in p.smembers(keys.held_lists(node_id)))
            if held:
                p.watch(*held)  # type: ignore[no-untyped-call]
            if p.exists(keys.alive(node_id)):
                raise _live(node_id)
            left = sum(int(p.llen(key)) for key in [*lists, *held]) + int(p.zcard(Keys.rq_started(queue)))
            if left:
                raise GpufleetError(f"node {node_id!r} still has {left} job(s) that could not be handed back; "
                                    "nothing was removed (is a dispatcher moving them? try again)")  # fmt: skip
            failed_kept, *others = (int(p.zcard(key)) for key in ended)
            p.multi()
            p.srem(keys.nodes, node_id)
            p.delete(keys.heartbeat(node_id), keys.drain_flag(node_id), keys.ejected(node_id),
                     keys.held_lists(node_id), keys.node_wakeup(node_id), Keys.rq_started(queue), *lists, *held)
            if not failed_kept and not any(others):
                p.srem(RQ_QUEUES, Keys.rq_queue(queue))
            p.execute()
        except WatchError:
            raise GpufleetError(f"node {node_id!r} changed while it was being forgotten (its worker came back, or a "
                                "job reached it): nothing was removed; try again") from None  # fmt: skip
    return ForgetReport(node_id, back.requeued, back.retried, back.failed, failed_kept)


def _refuse_live(r: Redis, keys: Keys, node_id: str) -> None:
    if r.exists(keys.alive(node_id)):
        raise _live(node_id)


def _live(node_id: str) -> GpufleetError:
    return GpufleetError(f"node {node_id!r} is live (its worker is beating): stop that worker first; only a "
                         "dead node can be forgotten")  # fmt: skip


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
    for node_id in _node_ids_with_queues(r, keys):
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


def _node_ids_with_queues(r: Redis, keys: Keys) -> list[str]:
    """Every node in the nodes set, and every forgotten one whose queue rq still lists (its
    dead-letter queue may hold jobs): sorted."""
    prefix = Keys.rq_queue(keys.node_queue(""))
    queued = {q[len(prefix):] for q in map(as_text, r.smembers(RQ_QUEUES)) if q.startswith(prefix)}
    return sorted(queued | {as_text(n) for n in r.smembers(keys.nodes)})
