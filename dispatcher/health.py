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

from .job import BatchCounter
from .keys import PRIORITIES, JobField, Keys
from .models import NodeState
from .outliers import FailureRateOutliers
from .retry import may_retry
from .scripts import Ending, JobPlace, Scripts
from .settings import Settings

log = logging.getLogger(__name__)

RETRY_PROMOTE_CHUNK = 500


@dataclass(frozen=True)
class NodeJob:
    """A job found on a node: where it sits and what decides its fate."""

    place: JobPlace
    priority: str
    attempts: int
    retries: int
    running: bool


@dataclass(frozen=True)
class RequeueReport:
    requeued: int = 0  # queued jobs given back to the ingress
    retried: int = 0  # running jobs sent to run again elsewhere
    failed: int = 0  # running jobs past their retry limit


def find_node_jobs(r: Redis, keys: Keys, node_id: str, *, include_running: bool) -> list[NodeJob]:
    """The node's jobs, running first (they were dequeued earliest), then queued in order."""
    queue = keys.node_queue(node_id)
    with r.pipeline(transaction=False) as p:
        p.lrange(Keys.rq_queue(queue), 0, -1)
        p.lrange(Keys.rq_intermediate(queue), 0, -1)
        p.zrange(Keys.rq_started(queue), 0, -1)
        queued, popped, started = p.execute()
    places = []
    if include_running:
        places += [JobPlace(j.decode(), Keys.rq_intermediate(queue)) for j in popped]
        places += [JobPlace(m.decode().split(":")[0], Keys.rq_started(queue), member=m.decode()) for m in started]
    places += [JobPlace(j.decode(), Keys.rq_queue(queue)) for j in queued]
    if not places:
        return []
    with r.pipeline(transaction=False) as p:
        for place in places:
            p.hmget(Keys.rq_job(place.job_id), JobField.PRIORITY, JobField.BATCH, JobField.ATTEMPTS, JobField.RETRIES)
        fields = p.execute()
    jobs = []
    for place, (priority, batch, attempts, retries) in zip(places, fields):
        jobs.append(NodeJob(
            place=JobPlace(place.job_id, place.source, (batch or b"").decode(), place.member),
            priority=(priority or b"normal").decode(),
            attempts=int(attempts or 0),
            retries=int(retries or 0),
            running=place.source != Keys.rq_queue(queue),
        ))  # fmt: skip
    return jobs


def requeue_node(r: Redis, keys: Keys, scripts: Scripts, settings: Settings, node_id: str, *,
                 include_running: bool, only: set[str] | None = None) -> RequeueReport:  # fmt: skip
    """Give a node's jobs (or just those in `only`) back to the front of their ingress, in
    order; a running one is retried, or failed "node <id> lost" past its retry limit."""
    jobs = find_node_jobs(r, keys, node_id, include_running=include_running)
    if only is not None:
        jobs = [j for j in jobs if j.place.job_id in only]
    limit = settings.node_loss_retries
    back = [j for j in jobs if not j.running or may_retry(j.attempts, max(j.retries, limit))]
    doomed = [j for j in jobs if j not in back]
    returned = 0
    for priority in PRIORITIES:
        places = [j.place for j in back if j.priority == priority]
        returned += sum(scripts.return_to_ingress(priority, places, at_front=True))
    endings = [Ending(j.place, Keys.rq_failed(keys.node_queue(node_id)), f"node {node_id} lost") for j in doomed]
    failed = sum(scripts.end_jobs(endings, status="failed", counter=BatchCounter.FAILED, ttl_s=settings.result_ttl_s))
    retried = sum(1 for j in back if j.running)
    return RequeueReport(requeued=returned - retried, retried=retried, failed=failed)


class Health:
    """Acts on dead and draining nodes and on due retries, once per node snapshot."""

    def __init__(self, r: Redis, keys: Keys, scripts: Scripts, settings: Settings) -> None:
        self._r, self._keys, self._scripts, self._settings = r, keys, scripts, settings
        self._handled_dead: set[str] = set()  # dead nodes already emptied; forgotten once alive again
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
                if not n.accepting and n.queued:  # draining, ejected or unhealthy: hand back its queue
                    report = self.requeue_node(n.node_id, include_running=False)
                    log.info("node not accepting, queue handed back node=%s requeued=%d", n.node_id, report.requeued)
            elif n.node_id not in self._handled_dead or n.queued:
                report = self.requeue_node(n.node_id, include_running=True)
                self._handled_dead.add(n.node_id)
                if report != RequeueReport():
                    log.warning("node lost node=%s requeued=%d retried=%d failed=%d", n.node_id,
                                report.requeued, report.retried, report.failed)  # fmt: skip
        self.promote_due_retries(now_s)

    def requeue_node(self, node_id: str, *, include_running: bool) -> RequeueReport:
        return requeue_node(self._r, self._keys, self._scripts, self._settings, node_id, include_running=include_running)

    def promote_due_retries(self, now_s: float) -> int:
        """Jobs whose retry backoff has passed go to the back of their ingress."""
        with self._r.pipeline(transaction=False) as p:
            for priority in PRIORITIES:
                p.zrangebyscore(self._keys.retry_schedule(priority), "-inf", now_s, start=0, num=RETRY_PROMOTE_CHUNK)
            due = p.execute()
        promoted = 0
        for priority, ids in zip(PRIORITIES, due):
            places = [JobPlace(j.decode(), self._keys.retry_schedule(priority)) for j in ids]
            promoted += sum(self._scripts.return_to_ingress(priority, places, at_front=False))
        return promoted
