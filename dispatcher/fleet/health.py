"""Dead and draining nodes give their jobs back; due retries return to the ingress.

Run by the active dispatcher after each node snapshot. A node whose liveness key expired is
dead: its queued jobs go back to the front of their ingress in order, and the job it was
running is retried elsewhere or, past its retry limit, failed with "node <id> lost". A
draining node hands back its queued jobs and finishes the one it runs. Every move is a Lua
call that re-checks each job's place, so running this twice, or from two dispatchers,
moves nothing twice.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis

from ..routing.models import NodeState
from ..settings import Settings
from ..store.events import EventKind, add_event
from ..store.job import BatchCounter
from ..store.keys import PRIORITIES, JobField, Keys
from ..store.scripts import DROPPED, MOVED, Ending, JobPlace, Scripts, as_raw, read_id
from .node_claim import STOP_MARK_PREFIX, worker_prefix
from .outliers import FailureRateOutliers
from .retry import may_retry

log = logging.getLogger(__name__)

RETRY_PROMOTE_CHUNK = 500
STOP_REASON = "stopped on request"  # gf_error of a job stopped while it ran (cancel --running)


@dataclass(frozen=True)
class NodeJob:
    """A job found on a node: where it sits and what decides its fate."""

    place: JobPlace
    priority: str
    attempts: int
    retries: int
    running: bool  # started (in rq's started registry); a held job was taken, never started
    stop_asked: bool  # running, and its run is among the node's stop requests (cancel --running)


@dataclass(frozen=True)
class RequeueReport:
    requeued: int = 0  # queued (or taken, never started) jobs given back to the ingress
    retried: int = 0  # running jobs sent to run again elsewhere
    failed: int = 0  # running jobs past their retry limit
    dropped: int = 0  # ids whose job HASH was gone: removed, nothing could run them
    stopped: int = 0  # running jobs asked to stop: canceled, never run again


@dataclass(frozen=True)
class Leftovers:
    """Which of a node's jobs to look through (find_node_jobs).

    held: the held lists of these worker processes, or None for every list the node has;
    started_by: started jobs whose rq worker name starts with this ("" for all; None: none);
    queued: the node queue too."""

    held: tuple[str, ...] | None = None
    started_by: str | None = ""
    queued: bool = False

    @classmethod
    def of_holder(cls, keys: Keys, node_id: str, holder: str) -> Leftovers:
        """What one worker process (node_claim.holder_name) has taken or started."""
        return cls(held=(keys.held(node_id, holder),), started_by=worker_prefix(node_id, holder))


def find_node_jobs(r: Redis, keys: Keys, node_id: str, scope: Leftovers) -> list[NodeJob]:
    """The node's jobs in `scope`: running first, then taken (both dequeued earliest), then
    queued in order. rq's own intermediate list is read with every held list (a job an rq
    dequeue left there, e.g. by an older worker)."""
    queue = keys.node_queue(node_id)
    if scope.held is None:
        members: set[bytes] = r.smembers(keys.held_lists(node_id))  # type: ignore[assignment]
        lists = [*sorted(k.decode() for k in members), Keys.rq_intermediate(queue)]
    else:
        lists = list(scope.held)
    with r.pipeline(transaction=False) as p:
        if scope.started_by is not None:
            p.zrange(Keys.rq_started(queue), 0, -1)
            p.smembers(keys.stop_requests(node_id))
        for held in lists:
            p.lrange(held, 0, -1)
        if scope.queued:
            p.lrange(Keys.rq_queue(queue), 0, -1)
        replies = iter(p.execute())
    places = []
    stops: set[str] = set()
    if scope.started_by is not None:
        for member in map(read_id, next(replies)):
            places.append(JobPlace(member.split(":")[0], Keys.rq_started(queue), member=member))
        stops = {read_id(m) for m in next(replies)}
    for held in lists:
        places += [JobPlace(read_id(j), held) for j in next(replies)]
    if scope.queued:
        places += [JobPlace(read_id(j), Keys.rq_queue(queue)) for j in next(replies)]
    if not places:
        return []
    with r.pipeline(transaction=False) as p:
        for place in places:
            p.hmget(as_raw(Keys.rq_job(place.job_id)), JobField.PRIORITY, JobField.BATCH, JobField.ATTEMPTS,
                    JobField.RETRIES, "worker_name")  # fmt: skip
        fields = p.execute()
    jobs = []
    for place, (priority, batch, attempts, retries, worker) in zip(places, fields):
        if place.member and not (worker or b"").decode("utf-8", "replace").startswith(scope.started_by or ""):
            continue  # started by another process of this node
        jobs.append(NodeJob(
            place=JobPlace(place.job_id, place.source, (batch or b"").decode("utf-8", "replace"), place.member),
            priority=_priority(priority),
            attempts=_count(attempts),
            retries=_count(retries),
            running=bool(place.member),
            stop_asked=place.member in stops,
        ))  # fmt: skip
    return jobs


def requeue_node(r: Redis, keys: Keys, scripts: Scripts, settings: Settings, node_id: str,
                 scope: Leftovers) -> RequeueReport:  # fmt: skip
    """Give a node's jobs in `scope` back to the front of their ingress, in order; a running one
    is retried, or failed "node <id> lost" past its retry limit, or, when it was asked to stop
    (cancel --running), canceled: a stop is never undone by the loss of the node that ran it."""
    jobs = find_node_jobs(r, keys, node_id, scope)
    limit = settings.node_loss_retries
    stopping = [j for j in jobs if j.stop_asked]
    back = [j for j in jobs if not j.running or (not j.stop_asked and may_retry(j.attempts, max(j.retries, limit)))]
    doomed = [j for j in jobs if j not in back and not j.stop_asked]
    outcome: dict[JobPlace, int] = {}
    for priority in PRIORITIES:
        places = [j.place for j in back if j.priority == priority]
        outcome.update(zip(places, scripts.return_to_ingress(priority, places, at_front=True)))
    endings = [Ending(j.place, Keys.rq_failed(keys.node_queue(node_id)), f"node {node_id} lost") for j in doomed]
    ended = scripts.end_jobs(endings, status="failed", counter=BatchCounter.FAILED, ttl_s=settings.result_ttl_s,
                             events_max=settings.events_max)
    stopped = _end_stopped(r, keys, scripts, settings, node_id, stopping)
    returned = [j for j in back if outcome[j.place] == MOVED]
    _retried_events(r, keys, settings, node_id, [j for j in returned if j.running])
    dropped = [*outcome.values(), *ended, *stopped].count(DROPPED)
    if dropped:
        log.warning("job data missing, ids dropped node=%s dropped=%d", node_id, dropped)
    retried = sum(j.running for j in returned)
    return RequeueReport(requeued=len(returned) - retried, retried=retried, failed=ended.count(MOVED),
                         dropped=dropped, stopped=stopped.count(MOVED))  # fmt: skip


def _retried_events(r: Redis, keys: Keys, settings: Settings, node_id: str, jobs: list[NodeJob]) -> None:
    """The job_retried event of each running job handed back from a lost node (written just
    after the move: return_to_ingress.lua writes no events)."""
    if not jobs:
        return
    with r.pipeline(transaction=False) as p:
        for j in jobs:
            add_event(p, keys, settings.events_max, EventKind.JOB_RETRIED, batch=j.place.batch_id, job=j.place.job_id,
                      node=node_id, attempt=j.attempts, error=f"node {node_id} lost")  # fmt: skip
        p.execute()


def _end_stopped(r: Redis, keys: Keys, scripts: Scripts, settings: Settings, node_id: str,
                 jobs: list[NodeJob]) -> list[int]:  # fmt: skip
    """End running jobs that were asked to stop as canceled (STOP_REASON), and drop their stop
    requests; MOVED, SKIPPED or DROPPED per job."""
    if not jobs:
        return []
    endings = [Ending(j.place, Keys.rq_canceled(keys.node_queue(node_id)), STOP_REASON) for j in jobs]
    ended = scripts.end_jobs(endings, status="canceled", counter=BatchCounter.CANCELED, ttl_s=settings.result_ttl_s,
                             events_max=settings.events_max)
    r.srem(keys.stop_requests(node_id), *(as_raw(j.place.member) for j in jobs))
    return ended


def recover_node(r: Redis, keys: Keys, scripts: Scripts, settings: Settings, node_id: str) -> RequeueReport:
    """What earlier processes of a node left, before its new incarnation takes any work: the
    jobs they took or started go back (running ones retried as for a dead node), their held
    lists leave the node's set, and a stop mark one set no longer drains the node. The node
    queue stays as it is: the new process works it."""
    report = requeue_node(r, keys, scripts, settings, node_id, Leftovers())
    with r.pipeline(transaction=False) as p:
        p.delete(keys.held_lists(node_id))  # emptied above; nothing refills them (takes need the new token)
        p.get(keys.drain_flag(node_id))
        _, drain = p.execute()
    if drain is not None and drain.startswith(STOP_MARK_PREFIX.encode()):
        r.delete(keys.drain_flag(node_id))
    return report


def _priority(raw: bytes | None) -> str:
    text = (raw or b"normal").decode("utf-8", "replace")
    return text if text in PRIORITIES else "normal"


def _count(raw: bytes | None) -> int:
    """A gf_ counter field; garbage reads as 0 rather than stopping the health pass."""
    try:
        return max(0, int(raw or 0))
    except ValueError:
        return 0


class Health:
    """Acts on dead and draining nodes and on due retries, once per node snapshot."""

    def __init__(self, r: Redis, keys: Keys, scripts: Scripts, settings: Settings) -> None:
        self._r, self._keys, self._scripts, self._settings = r, keys, scripts, settings
        self._handled_dead: set[str] = set()  # dead nodes already emptied; forgotten once alive again
        self._incarnations: dict[str, str] = {}  # the process last seen running each live node
        self._outliers = FailureRateOutliers(settings.outlier_failure_rate, settings.outlier_min_jobs,
                                             settings.outlier_window_s)  # fmt: skip

    def check(self, nodes: Sequence[NodeState], now_s: float | None = None) -> None:
        now_s = time.time() if now_s is None else now_s
        for node_id, rate, jobs in self._outliers.observe(nodes, now_s):
            self._r.set(self._keys.ejected(node_id), f"{rate:.2f}", px=int(self._settings.eject_cooldown_s * 1000))
            log.warning("node ejected node=%s failure_rate=%.2f jobs=%d cooldown_s=%g", node_id, rate, jobs,
                        self._settings.eject_cooldown_s)  # fmt: skip
        for n in nodes:
            if n.alive:
                self._handled_dead.discard(n.node_id)
                seen = self._incarnations.get(n.node_id)
                if seen is not None and seen != n.incarnation:  # its new process gave back what the old one held
                    log.info("node restarted node=%s incarnation=%s was=%s", n.node_id, n.incarnation, seen)
                self._incarnations[n.node_id] = n.incarnation
                if not n.accepting and n.queued:  # draining, ejected or unhealthy: hand back its queue
                    report = self.requeue_node(n.node_id, Leftovers(held=(), started_by=None, queued=True))
                    log.info("node not accepting, queue handed back node=%s requeued=%d", n.node_id, report.requeued)
            elif n.node_id not in self._handled_dead or n.queued:
                report = self.requeue_node(n.node_id, Leftovers(queued=True))
                self._handled_dead.add(n.node_id)
                if report != RequeueReport():
                    log.warning("node lost node=%s requeued=%d retried=%d failed=%d", n.node_id,
                                report.requeued, report.retried, report.failed)  # fmt: skip
        self.promote_due_retries(now_s)

    def requeue_node(self, node_id: str, scope: Leftovers) -> RequeueReport:
        return requeue_node(self._r, self._keys, self._scripts, self._settings, node_id, scope)

    def promote_due_retries(self, now_s: float) -> int:
        """Jobs whose retry backoff has passed go to the back of their ingress."""
        with self._r.pipeline(transaction=False) as p:
            for priority in PRIORITIES:
                p.zrangebyscore(self._keys.retry_schedule(priority), "-inf", now_s, start=0, num=RETRY_PROMOTE_CHUNK)
            due = p.execute()
        promoted = 0
        for priority, ids in zip(PRIORITIES, due):
            places = [JobPlace(read_id(j), self._keys.retry_schedule(priority)) for j in ids]
            promoted += self._scripts.return_to_ingress(priority, places, at_front=False).count(MOVED)
        return promoted
