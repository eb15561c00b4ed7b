"""The dispatch loop: snapshot nodes -> route a batch of ingress jobs -> move them atomically.

The only loop in the dispatcher. Submitted jobs wait in lanes (one per batch and priority);
each round first takes from the lanes into the ingress what the last round planned by fair
share between tenants (FairShare: which job goes next), just enough to fill the room the fleet
will have. Jobs are read from the head of each ingress (high, then
normal, then low), routed by the Router over the latest node snapshot plus what this loop
sent since, minus the runs that ended since (each worker's record step counts them in
keys.dispatch_ended, which the snapshot resets atomically), and moved with one Lua call per
batch. So the in-flight counts are exact between snapshots: an idle fleet routes a job the
moment it is submitted, whatever ran before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass

import redis
from redis import Redis

from .fleet.autoscale import Autoscaler
from .fleet.health import Health
from .fleet.lease import Lease
from .fleet.snapshot import NodeReader
from .fleet.tenants import TenantSettings, parse_tenants, read_waiting_counts
from .observe.history import History
from .observe.metrics import DispatcherMetrics, set_desired_nodes
from .routing.fair_share import Backlog, FairShare
from .routing.models import JobSpec, NodeState
from .routing.policies import Policy
from .routing.router import Router
from .settings import Settings
from .store.connection import REDIS_DOWN
from .store.job import needs_spec
from .store.keys import PRIORITIES, JobField, Keys
from .store.scripts import DROPPED, MOVED, Fed, Feed, FeedReply, Lane, LaneTake, Scripts, read_id

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 5.0
LATENCY_WEIGHT = 0.1  # the EWMA weight of each round's latency (dispatch_latency_s)
FULL_WAIT_SHARE = 0.5  # with every node full, wait this share of the expected time until one has room
RATE_WINDOW_S = 2.0  # the arrival rate (jobs routed per second) is measured over windows this long...
RATE_WEIGHT = 0.5  # ...each folded into its running mean with this weight


@dataclass(frozen=True)
class Round:
    """What one dispatch round did."""

    moved: int  # jobs moved to node queues
    waiting: int  # jobs seen in the ingress that stayed there
    full_for_s: float = 0.0  # no node had room: about how long until one has (Router.time_to_room)
    drained: bool = False  # every job the ingresses held when read was placed: no need to look again at once


class Dispatcher:
    """Moves jobs from the ingress queues to node queues, one routing round at a time."""

    def __init__(
        self, r: Redis, settings: Settings, policy: Policy, *, clock: Callable[[], float] = time.monotonic,
        metrics: DispatcherMetrics | None = None, autoscaler: Autoscaler | None = None,
    ) -> None:
        self._r = r
        self._settings = settings
        self._keys = Keys(settings.namespace)
        self._scripts = Scripts(r, self._keys)
        max_node_queue = None if settings.max_node_queue < 0 else settings.max_node_queue
        prefetch = None if settings.prefetch < 0 else settings.prefetch
        self.router = Router(policy, prefetch=prefetch, max_node_queue=max_node_queue)
        self.arrivals = RateMeter()  # jobs routed per second: what gates are solved for
        self._clock = clock
        self.health = Health(r, self._keys, self._scripts, settings)
        self.lease = Lease(r, self._keys, self._scripts, settings.lease_ttl_s, clock=clock)
        self._reader = NodeReader(r, self._keys, resets_ended=True)  # keeps parsed heartbeats between refreshes
        self._nodes: list[NodeState] = []
        self._snapshot_at = float("-inf")
        self._waiting_for_nodes = False
        self._rounds = 0
        self.moved_total = 0
        self.metrics = metrics  # Prometheus: fed after each refresh and each round that moved jobs
        self.autoscaler = autoscaler  # desired node count, stepped after a refresh (at most once a second)
        self.history = History(settings.history_bucket_s)  # the dashboard's charts, a bucket at a time
        self.fair = FairShare()  # which tenant's (and batch's) jobs are taken into the ingress next
        self._plan: dict[str, list[LaneTake]] = {}  # priority -> what the next round takes from its lanes
        self._backlog: dict[str, Backlog] = {}  # priority -> its lanes as last read
        self._tenants: dict[str, TenantSettings] = {}
        self._flight: dict[str, int] = {}  # tenant -> jobs in flight, as last read
        self._left: dict[str, int] = {}  # priority -> jobs left in its ingress by the last round
        self._ingress_depths: dict[str, int] = {}  # priority -> its ingress's length, as this round read it

    def refresh(self) -> list[NodeState]:
        """Re-read every node (two round trips), then let dead and draining nodes give their
        jobs back and due retries return to the ingress; count what the nodes ended for the
        history, written once per bucket."""
        self._nodes = self._reader.read()
        self._snapshot_at = self._clock()
        self.health.check(self._nodes)
        self.history.observe(self._nodes)
        self.history.write(self._r, self._keys, time.time())
        if self.autoscaler and (desired := self.autoscaler.step(self._nodes)) is not None:
            set_desired_nodes(desired)
        if self.metrics:
            self.metrics.observe_fleet(self._r, self._keys, self._nodes)
        return self._nodes

    def dispatch_once(self) -> Round:
        """One routing round over every priority, high first: the runs that ended since the
        last one, the feed of each ingress from its lanes (the last round's fair-share plan)
        and the heads of the three ingresses in one round trip, then one move script call per
        priority that has jobs, and the plan for the next round."""
        began = time.perf_counter()
        fresh = self._clock() - self._snapshot_at >= self._settings.snapshot_interval_s
        if fresh:
            self.refresh()
        moved = waiting = 0
        started, moved_to = time.perf_counter(), list[str]()  # for the metrics, when on
        self._rounds += 1
        order = priority_order(self._rounds, self._settings.low_share)
        room = self.router.free_room(self._nodes)  # None: a node is unbounded
        ended_taken = fresh  # a fresh read is the base: nothing ended since
        if room == 0 and not ended_taken:  # full as far as we know: what ended may have made room
            self._take_ended(self._ended_reply())
            room, ended_taken = self.router.free_room(self._nodes), True
        if room == 0:  # no room anywhere: read no job (how many wait matters to the report only)
            full = Round(0, self._waiting_total() if fresh else 0, self.router.time_to_room(self._nodes))
            return self._finish(began, fresh, started, moved_to, full)
        batch = self._settings.dispatch_batch
        count = batch if room is None else min(room, batch)
        heads, depth = self._read_heads(order, count, take_ended=not ended_taken, depths=self.router.gated)
        room = self.router.free_room(self._nodes)  # with what ended taken off
        left = dict(self._ingress_depths)  # priority -> jobs still in its ingress after this round
        for priority, jobs in zip(order, heads):
            slots = batch if room is None else min(room, batch)
            if not jobs:
                continue
            if not slots:
                waiting += len(jobs)
                continue
            jobs = jobs[:slots]
            behind = max(0, depth - moved - len(jobs))  # the other jobs still in an ingress (0 when not read)
            moves, self._nodes = self.router.route(jobs, self._nodes, waiting=behind)
            flags = self._scripts.move_to_nodes(self._keys.ingress_queue(priority), moves)
            moved += flags.count(MOVED)
            if DROPPED in flags:
                log.warning("job data missing, ids dropped from the ingress priority=%s dropped=%d", priority,
                            flags.count(DROPPED))  # fmt: skip
            if self.metrics:
                moved_to += [node_id for (_, node_id), flag in zip(moves, flags) if flag == MOVED]
            waiting += len(jobs) - len(moves)
            left[priority] -= len(moves)
            if room is not None:
                room -= len(moves)  # each placement took one free slot of a bounded node
        self._left = left
        room = self.router.free_room(self._nodes)
        self._plan_feed(left, room)
        planned = bool(self._plan) and room != 0  # with no room left the plan waits for the next round with some
        drained = not waiting and all(len(jobs) < count for jobs in heads) and not planned
        return self._finish(began, fresh, started, moved_to, Round(moved, waiting, drained=drained))

    def _plan_feed(self, left: dict[str, int], room: int | None) -> None:
        """What the next round takes from the lanes into each ingress, by fair share: enough that
        the ingress holds the fleet's free room plus one job per slot (what the slots free
        before the next round), counting what is still there; within each tenant's room under
        its max_running (jobs in flight count against it). `room`: the fleet's free room now."""
        slots = sum(n.capacity for n in self._nodes if n.accepting)
        batch = self._settings.dispatch_batch
        target = batch if room is None else min(batch, room + slots)
        weights = {t: s.weight for t, s in self._tenants.items()}
        quota = {t: max(0, s.max_running - self._flight.get(t, 0)) for t, s in self._tenants.items()
                 if s.max_running is not None}  # fmt: skip
        self._plan = {}
        for priority in PRIORITIES:
            backlog = self._backlog.get(priority)
            want = target - left.get(priority, 0)
            if not backlog or not backlog.lanes or want <= 0:
                continue
            taken = self.fair.plan(backlog, want, weights, quota)
            for batch_id, n in taken.items():
                tenant = backlog.lanes[batch_id]
                if tenant in quota:
                    quota[tenant] -= n
            if taken:
                self._plan[priority] = [LaneTake(Lane(b, backlog.lanes[b]), n) for b, n in taken.items()]

    def _finish(self, began: float, fresh: bool, started: float, moved_to: list[str], rnd: Round) -> Round:
        """The round's bookkeeping: totals, the dispatch latency, metrics, the no-live-node report."""
        self.moved_total += rnd.moved
        self.router.arrival_rate = self.arrivals.add(rnd.moved, self._clock())
        if rnd.moved:  # how long a freed slot waits for its refill: what a node's prefetch must cover
            self.router.dispatch_latency_s = ewma(self.router.dispatch_latency_s, time.perf_counter() - began)
        if self.metrics and rnd.moved:
            self.metrics.observe_round(moved_to, time.perf_counter() - started)
        if fresh:  # judge "no live node" on a snapshot taken now, not one from before a node started
            self._report(rnd.moved, rnd.waiting)
        return rnd

    def _ended_reply(self) -> list[bytes]:
        with self._r.pipeline(transaction=False) as p:
            self._scripts.take_ended(p)
            return list(p.execute()[0])

    def _take_ended(self, reply: list[bytes]) -> None:
        """Take off the runs that ended since the last read or take (a take_ended reply)."""
        if reply:
            counts = {read_id(node_id): int(n) for node_id, n in zip(reply[::2], reply[1::2])}
            self._nodes = self.router.ended(self._nodes, counts)

    def _read_heads(self, priorities: Sequence[str], count: int, *, take_ended: bool, depths: bool
                    ) -> tuple[list[list[tuple[str, JobSpec]]], int]:  # fmt: skip
        """The first `count` job ids of each ingress with what routing needs of each job, and
        with `depths` how many jobs wait in all, ingresses and lanes (else 0), in one round
        trip. In it, first (with `take_ended`) the runs that ended since are taken off, then one
        script feeds every ingress from its lanes (the last round's plan, and what is left of
        `count` from lanes the plan did not know) and returns what the next plan needs (see
        feed_ingress.lua). The heads are then read with
        per ingress one `SORT <list> BY nosort LIMIT 0 count GET # GET rq:job:*->gf_needs`,
        which reads a list range in order and each id's needs (nil when it has none) in one
        command, instead of LRANGE + one HMGET per job. (SORT's GET patterns reach keys the
        command does not name, as a script with built keys would: fine on one Redis, refused
        by Redis Cluster, which gpufleet does not use.)"""
        plan, self._plan = self._plan, {}
        feeds = [Feed(priority, plan.get(priority, []), max(0, count - self._left.get(priority, 0)))
                 for priority in PRIORITIES]  # fmt: skip
        with self._r.pipeline(transaction=False) as p:
            if take_ended:
                self._scripts.take_ended(p)
            self._scripts.feed_ingress(feeds, count_left=depths, pipeline=p)
            for priority in priorities:
                p.sort(Keys.rq_queue(self._keys.ingress_queue(priority)), start=0, num=count, by="nosort",
                       get=list(ROUTING_GETS))  # fmt: skip
            replies = p.execute()
        if take_ended:
            self._take_ended(replies.pop(0))
        reply = FeedReply.of_reply(PRIORITIES, replies.pop(0))
        heads = [_routing_jobs(replies.pop(0)) for _ in priorities]
        self._ingress_depths = {priority: fed.ingress for priority, fed in reply.fed.items()}
        self._tenants = parse_tenants(reply.tenants)
        self._flight = dict(reply.flight)
        self._take_fed(plan, reply.fed)
        depth = sum(fed.ingress + fed.lanes_left for fed in reply.fed.values()) if depths else 0
        return heads, depth

    def _take_fed(self, plan: dict[str, list[LaneTake]], fed: Mapping[str, Fed]) -> None:
        """Charge the fair share with what the lanes gave, and keep what is known of each lane."""
        weights = {t: s.weight for t, s in self._tenants.items()}
        for priority in PRIORITIES:
            lanes = fed[priority].lanes
            depths: dict[str, int] = {}
            charged: dict[str, int] = {}
            of: dict[str, str] = {}
            taken = [(take.lane, n, left) for take, (n, left) in zip(plan.get(priority, ()), fed[priority].planned)]
            for lane, n, left in [*taken, *fed[priority].others]:
                charged[lane.batch_id], of[lane.batch_id] = charged.get(lane.batch_id, 0) + n, lane.tenant
                if left >= 0:  # -1: it gave all that was asked, so how many are left is not known
                    depths[lane.batch_id] = left
            self.fair.charge({**lanes, **of}, charged, weights)
            known = {b: n for b, n in depths.items() if b in lanes}
            self._backlog[priority] = Backlog(lanes, known)

    def _waiting_total(self) -> int:
        """Jobs waiting at every priority, in the ingresses and the lanes (two round trips)."""
        return sum(w.total for w in read_waiting_counts(self._r, self._keys).values())

    def _report(self, moved: int, waiting: int) -> None:
        """One log line when jobs start waiting for want of a live node, and one when nodes are
        back; a full fleet is normal (late binding) and logs nothing."""
        no_live_node = bool(waiting) and not any(n.accepting for n in self._nodes)
        if no_live_node and not self._waiting_for_nodes:
            log.warning("no live node: jobs wait in the ingress waiting>=%d", waiting)
        elif self._waiting_for_nodes and not no_live_node:
            log.info("live nodes again, dispatching nodes=%d", sum(n.alive for n in self._nodes))
        self._waiting_for_nodes = no_live_node

    def run(self, stop: threading.Event) -> None:
        """Route while holding the lease (stand by otherwise) until `stop` is set; survives
        Redis outages with one log line per outage."""
        backoff_s = 0.0
        try:
            while not stop.is_set():
                try:
                    if backoff_s:  # a standby's lease check may not touch Redis: ask it directly
                        self._r.ping()
                        log.info("redis reachable again")
                        backoff_s = 0.0
                    rnd = self.dispatch_once() if self.lease.check() else None
                    self._pause(stop, rnd)
                except REDIS_DOWN as e:
                    if not backoff_s:
                        log.error("redis unreachable, retrying with backoff error=%s", e)
                    backoff_s = min(MAX_BACKOFF_S, max(0.1, backoff_s * 2))
                    stop.wait(backoff_s)
                except Exception:  # a bug or a surprise: keep routing, say what happened
                    log.exception("dispatch round failed")
                    stop.wait(1.0)
        finally:
            with suppress(redis.RedisError):
                self.lease.release()

    def _pause(self, stop: threading.Event, rnd: Round | None) -> None:
        """Wait before the next round: not at all after moving jobs while more may wait; else
        until a submit or a job's end wakes us (a job ending frees a slot, which the next round takes off) or the
        next snapshot is due. When every node was full, first wait half the time until one is
        expected to take work again (a node refilled in batches opens only after several ends,
        and holds work for the latency beyond that), so those ends cost one round, not each one."""
        if rnd is None:  # standing by
            stop.wait(self._settings.lease_ttl_s / 3)
            return
        if rnd.moved and not rnd.drained:  # more may wait: route them now
            return
        if rnd.full_for_s > 0:  # every node full: ends before a node can take work again only wake us for nothing
            stop.wait(min(FULL_WAIT_SHARE * rnd.full_for_s, self._settings.snapshot_interval_s))
        self._r.blpop([self._keys.dispatch_wakeup], timeout=self._settings.snapshot_interval_s)


class RateMeter:
    """Jobs per second: each round's count summed over a window of RATE_WINDOW_S, each
    window's rate folded into a running mean (RATE_WEIGHT), so a lull shows within seconds."""

    def __init__(self) -> None:
        self.rate = 0.0
        self._since: float | None = None
        self._count = 0

    def add(self, n: int, now: float) -> float:
        """Count `n` jobs at `now`; the rate as of the last full window."""
        if self._since is None:
            self._since = now
        self._count += n
        elapsed = now - self._since
        if elapsed >= RATE_WINDOW_S:
            self.rate = ewma(self.rate, self._count / elapsed, RATE_WEIGHT)
            self._since, self._count = now, 0
        return self.rate


def ewma(mean: float, sample: float, weight: float = LATENCY_WEIGHT) -> float:
    """A running mean (the dispatch latency's, by default) with `sample` folded in at `weight`
    (the first sample as it is)."""
    return sample if mean <= 0 else mean + weight * (sample - mean)


def priority_order(round_no: int, low_share: float) -> tuple[str, ...]:
    """Which ingress is served first in this round: high, normal, low, except that one round in
    1/low_share serves low first, so low keeps a small share of freed slots and never starves."""
    every = max(1, round(1 / low_share)) if low_share > 0 else 0
    if every and round_no % every == 0:
        return (PRIORITIES[-1], *PRIORITIES[:-1])
    return PRIORITIES


NO_NEEDS = JobSpec(func="")  # a job that names no model, affinity or GPU memory: most of them
ROUTING_GETS = ("#", f"{Keys.rq_job('*')}->{JobField.NEEDS}")  # SORT GET: the id, then its needs


def _routing_jobs(reply: list[bytes | None]) -> list[tuple[str, JobSpec]]:
    """(job id, routing needs) from a SORT ... GET # GET <needs field> reply."""
    return [
        (read_id(job_id), NO_NEEDS if needs is None else needs_spec(needs))  # `#` (the id) is never nil
        for job_id, needs in zip(*[iter(reply)] * 2)
    ]
