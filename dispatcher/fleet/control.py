"""Operator actions: drain, undrain and forget a node, cancel queued jobs (and stop running ones),
requeue failed ones."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass

from redis import Redis, WatchError
from rq.registry import CanceledJobRegistry, FailedJobRegistry, FinishedJobRegistry
from rq.utils import as_text

from ..errors import GpufleetError, NotFound
from ..settings import Settings
from ..store.events import EventKind, add_event
from ..store.job import BatchCounter
from ..store.keys import RQ_QUEUES, JobField, Keys
from ..store.scripts import MOVED, SKIPPED, Ending, JobPlace, Lane, Scripts, read_id
from .health import Leftovers, requeue_node
from .node_claim import OPERATOR_DRAIN
from .tenants import batch_tenant

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
    eject flags, its held lists and wake-up lists, its stop requests, and its (emptied) queue.

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
                     keys.held_lists(node_id), keys.node_wakeup(node_id), keys.stop_requests(node_id),
                     keys.stop_wakeup(node_id), Keys.rq_started(queue), *lists, *held)  # fmt: skip
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
    left: int  # already ended, or running and not asked to stop (cancel without `running`): untouched
    stopped: int = 0  # running and asked to stop: stopped on their node, now canceled
    stopping: int = 0  # asked to stop, still running when the wait ran out: their node goes on stopping them


SETTLE_ROUNDS = 3  # more looks at a job that moved while it was being canceled (routed, started, handed back)
STOP_POLL_S = 0.05  # how often cancel looks at the jobs it asked to stop, while it waits for them


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


def cancel(r: Redis, settings: Settings, target: str, *, running: bool = False,
           wait_s: float | None = None) -> CancelReport:  # fmt: skip
    """Cancel every job of a batch (or one job) that has not started: queued (in its lane, an
    ingress or a node queue) or waiting to retry. Ended jobs are left as they are.

    With `running`, the jobs running now are stopped on their node as well (worker/stopper.py)
    and end canceled, and cancel waits for them up to `wait_s` seconds (default: the stop grace
    plus two liveness TTLs, long enough for a node to restart a slot whose job did not stop).
    Without it, running jobs are left alone."""
    keys = Keys(settings.namespace)
    settle = _Settle(r, keys, Scripts(r, keys), settings, running)
    for ids in _job_ids(r, keys, target):
        settle.look(ids)
    wait = settings.stop_grace_s + 2 * settings.heartbeat_ttl_s if wait_s is None else wait_s
    deadline = time.monotonic() + wait
    for rounds in itertools.count(1):
        waiting = bool(settle.asked) and time.monotonic() < deadline
        if not waiting and (not settle.moved or rounds > SETTLE_ROUNDS):
            break
        if waiting:
            time.sleep(STOP_POLL_S)
        settle.look(settle.again())
    return settle.report()


class _Settle:
    """Where each job of a cancel stands: canceled, stopped or left alone (counted), asked to
    stop and still running (`asked`), or moved while it was looked at (`moved`: looked at again)."""

    def __init__(self, r: Redis, keys: Keys, scripts: Scripts, settings: Settings, running: bool) -> None:
        self._r, self._keys, self._scripts, self._settings, self._running = r, keys, scripts, settings, running
        self.canceled = self.stopped = self.left = 0
        self.asked: dict[str, set[str]] = {}  # job id -> its runs ("job_id:execution_id") asked to stop
        self.moved: set[str] = set()

    def report(self) -> CancelReport:
        """The counts; a job that moved on and was not caught counts as left alone."""
        return CancelReport(self.canceled, self.left + len(self.moved - self.asked.keys()), self.stopped,
                            len(self.asked))  # fmt: skip

    def again(self) -> list[str]:
        """The jobs to look at again (those that moved, those asked to stop), forgetting that they moved."""
        ids = sorted(self.moved | self.asked.keys())
        self.moved = set()
        return ids

    def look(self, ids: list[str]) -> None:
        """Cancel those of `ids` that wait, ask those that run to stop (with `running`), and
        count those that ended."""
        with self._r.pipeline(transaction=False) as p:
            for job_id in ids:
                p.hmget(Keys.rq_job(job_id), "status", "origin", JobField.PRIORITY, JobField.BATCH, JobField.NODE)
            rows = [[(v or b"").decode() for v in row] for row in p.execute()]
        endings, started = [], []
        for job_id, (status, origin, priority, batch, node) in zip(ids, rows):
            if status in ("queued", "scheduled"):
                retrying = self._keys.retry_schedule(priority or "normal")
                source = Keys.rq_queue(origin) if status == "queued" else retrying
                endings.append(Ending(JobPlace(job_id, source, batch), Keys.rq_canceled(origin), "canceled"))
            elif status == "started" and self._running and node:
                started.append((job_id, node))
            else:  # ended already, or running and left alone
                self._ended(job_id, canceled=status == "canceled", now=False)
        s = self._settings
        flags = self._scripts.end_jobs(endings, status="canceled", counter=BatchCounter.CANCELED,
                                       ttl_s=s.result_ttl_s, events_max=s.events_max)  # fmt: skip
        for ending, flag in zip(endings, flags):
            if flag == SKIPPED:  # it moved on (routed, taken, started) between the read and the end
                self.moved.add(ending.place.job_id)
            else:
                self._ended(ending.place.job_id, canceled=flag == MOVED, now=True)
        self._ask(started)

    def _ended(self, job_id: str, *, canceled: bool, now: bool) -> None:
        """Count a job that has ended, or that this cancel ended just now (`now`)."""
        if self.asked.pop(job_id, None) is not None:
            self.stopped += canceled
            self.left += not canceled
        elif canceled and now:
            self.canceled += 1
        else:
            self.left += 1

    def _ask(self, started: list[tuple[str, str]]) -> None:
        """Ask the node of each running job to stop the runs of it not asked about yet (one read
        of its started registry and one call per node); a job with no run in its node's started
        registry has moved. The registry, not the job's execution records: those expire while a
        long job runs (rq's TTL), its member in the registry stays until the run ends."""
        jobs_of: dict[str, set[str]] = {}
        for job_id, node in started:
            jobs_of.setdefault(node, set()).add(job_id)
        nodes = sorted(jobs_of)
        with self._r.pipeline(transaction=False) as p:
            for node in nodes:
                p.zrange(Keys.rq_started(self._keys.node_queue(node)), 0, -1)
            registries = p.execute()
        by_node: dict[str, list[tuple[str, str]]] = {}
        for node, members in zip(nodes, registries):
            for member in map(read_id, members):
                job_id = member.rpartition(":")[0]
                if job_id in jobs_of[node] and member not in self.asked.get(job_id, set()):
                    by_node.setdefault(node, []).append((job_id, member))
        for node, asks in by_node.items():
            flags = self._scripts.request_stop(node, [m for _, m in asks], self._settings.result_ttl_s)
            for (job_id, member), ok in zip(asks, flags):
                if ok:
                    self.asked.setdefault(job_id, set()).add(member)
        self.moved.update(job_id for job_id, _ in started if job_id not in self.asked)


def requeue_failed(r: Redis, settings: Settings, batch_id: str | None = None) -> int:
    """Put failed jobs (the dead-letter queue of every node), or only batch `batch_id`'s, back
    at the end of their batch's lane (they wait their tenant's turn again); returns how many."""
    keys = Keys(settings.namespace)
    if batch_id is not None and not r.exists(keys.batch_info(batch_id)):
        raise NotFound(f"no batch {batch_id!r}")
    scripts = Scripts(r, keys)
    requeued = 0
    tenants: dict[str, str] = {}  # batch id -> its tenant
    for node_id in _node_ids_with_queues(r, keys):
        registry = Keys.rq_failed(keys.node_queue(node_id))
        ids = [as_text(j) for j in r.zrange(registry, 0, -1)]  # type: ignore[arg-type]
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            with r.pipeline(transaction=False) as p:
                for job_id in chunk:
                    p.hmget(Keys.rq_job(job_id), JobField.PRIORITY, JobField.BATCH)
                rows = [[(v or b"").decode() for v in row] for row in p.execute()]
            groups: dict[tuple[str, str], list[JobPlace]] = {}
            for job_id, (prio, batch) in zip(chunk, rows):
                if batch_id is None or batch == batch_id:
                    groups.setdefault((prio or "normal", batch), []).append(JobPlace(job_id, registry, batch))
            for (priority, batch), places in groups.items():
                lane = Lane(batch, tenants.setdefault(batch, batch_tenant(r, keys, batch)))
                flags = scripts.return_to_ingress(priority, places, at_front=False, counter=BatchCounter.FAILED,
                                                  lane=lane)  # fmt: skip
                requeued += flags.count(MOVED)
                _requeued_events(r, keys, settings, [place for place, flag in zip(places, flags) if flag == MOVED])
    return requeued


def _requeued_events(r: Redis, keys: Keys, settings: Settings, places: list[JobPlace]) -> None:
    """The job_requeued event of each failed job put back (written just after the move:
    return_to_ingress.lua writes no events)."""
    if not places:
        return
    with r.pipeline(transaction=False) as p:
        for place in places:
            add_event(p, keys, settings.events_max, EventKind.JOB_REQUEUED, batch=place.batch_id, job=place.job_id)
        p.execute()


def _node_ids_with_queues(r: Redis, keys: Keys) -> list[str]:
    """Every node in the nodes set, and every forgotten one whose queue rq still lists (its
    dead-letter queue may hold jobs): sorted."""
    prefix = Keys.rq_queue(keys.node_queue(""))
    queued = {q[len(prefix):] for q in map(as_text, r.smembers(RQ_QUEUES)) if q.startswith(prefix)}
    return sorted(queued | {as_text(n) for n in r.smembers(keys.nodes)})
