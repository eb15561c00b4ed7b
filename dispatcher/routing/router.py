"""Routes a batch of ingress jobs over a node snapshot: late binding, in-flight accounting
(placements added, runs that ended since taken off) and session persistence.

Pure, like the policies it drives: the dispatcher loop and the simulator share it.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from .affinity import DEFAULT_AFFINITY_EPSILON, pick_affine
from .models import PYTHON, JobSpec, NodeState
from .policies import Policy, Ranking, eligible, ranking_of

MAX_LATENCY_PREFETCH = 32  # the most a node holds beyond its slots for want of dispatch speed
ROUND_SHARE = 0.1  # a node is refilled in batches that make a dispatch round at most this share of their run time
IDLE_SHARE = 0.02  # a derived prefetch holds no job while a slot idles at most this share of its time for its refill


@dataclass
class Router:
    """Places jobs one by one; each placement counts as load on its node for the next pick,
    so a burst between two heartbeats is spread, not herded onto the node that looked idle.

    A node holds at most `capacity + prefetch` jobs (late binding: the rest wait in the
    ingress for whichever node frees up first), or `capacity + batch_max` when its tasks
    batch more than `prefetch` jobs, so a full next batch waits while one runs;
    `max_node_queue=0` lifts the bound. `prefetch=None` (the default) derives it from the
    dispatch latency: none while a slot would idle at most IDLE_SHARE of its time waiting for
    its refill, else twice what the node's slots finish in one latency; a number is a floor.
    A job held on a node is committed to it, and the best node for it may be another that
    frees up first, so a node holds no more than the latency requires. With the dispatch
    latency known (the loop measures each round), a node whose jobs are short next to it is refilled in
    batches: once full it takes work again only when `refill_step` jobs are free, enough that
    the round costs at most ROUND_SHARE of their run time, and it holds that step plus twice
    what its slots finish while a refill is on its way (capacity x latency / service time),
    plus one, so it neither idles between refills nor costs a round per job: about a dozen
    dispatch latencies of work at most (and never more than MAX_LATENCY_PREFETCH jobs beyond
    its slots). A node whose jobs take more than 10 latencies keeps the plain prefetch and
    takes work as soon as one slot is free.
    A job with an `affinity` key goes to its rendezvous node unless that node is over
    (1 + affinity_epsilon) x the mean load (then the next in its rendezvous order); the
    policy decides only when no node in that order may take it.
    """

    policy: Policy
    prefetch: int | None = None  # None: what the dispatch latency needs (prefetch_of); N: at least N
    max_node_queue: int | None = None  # None: capacity + max(prefetch, batch_max); 0: unbounded; N: at most N
    affinity_epsilon: float = DEFAULT_AFFINITY_EPSILON
    # seconds from a slot freeing to the dispatcher's refill landing (0: not known); read when
    # the placement state is rebuilt (each node read), so a change costs no per-round work
    dispatch_latency_s: float = 0.0
    arrival_rate: float = 0.0  # jobs per second coming in (0: not known): what gates are solved for
    _last: Placement | None = field(default=None, init=False, repr=False, compare=False)

    def limit(self, n: NodeState) -> int | None:
        """The most jobs `n` may hold, or None when unbounded."""
        if self.max_node_queue == 0:
            return None
        if self.max_node_queue is None:
            prefetch = self.prefetch_of(n)
            return n.capacity + (max(prefetch, n.batch_max) if n.batch_max > 1 else prefetch)
        return self.max_node_queue

    def prefetch_of(self, n: NodeState) -> int:
        """Jobs `n` may hold beyond its slots. Derived (prefetch None): 0 while the dispatch
        latency is at most IDLE_SHARE of a job's run time (or unknown), else twice what its slots
        finish while a refill is on its way (capacity x latency / service time). A node refilled
        in batches (refill_step > 1) holds one refill more, plus one: the margin for a latency
        that varies from round to round. A set `prefetch` is a floor under all of it."""
        ratio = self._latency_per_job(n)
        through = 0 if ratio <= IDLE_SHARE else math.ceil(2 * n.capacity * ratio)
        floor = through if self.prefetch is None else self.prefetch
        step = self.refill_step(n)
        if step == 1:  # a latency under ROUND_SHARE of a job (or unknown): no batched refills
            return max(floor, through)
        return max(floor, min(MAX_LATENCY_PREFETCH, step + through + 1))

    def refill_step(self, n: NodeState) -> int:
        """How many jobs below its limit a full node must drop before it takes work again: 1,
        or enough that a round costs at most ROUND_SHARE of the run time of the jobs it sends."""
        ratio = self._latency_per_job(n)
        return max(1, min(MAX_LATENCY_PREFETCH // 2, math.ceil(ratio / ROUND_SHARE))) if ratio else 1

    def _latency_per_job(self, n: NodeState) -> float:
        """The dispatch latency in units of the node's service time (0: either is unknown)."""
        if self.dispatch_latency_s <= 0 or n.service_time_s <= 0:
            return 0.0
        return self.dispatch_latency_s / n.service_time_s

    def has_room(self, n: NodeState, held: int | None = None) -> bool:
        """Whether `n`, as a read finds it, may take work; `held` overrides the snapshot's count."""
        limit = self.limit(n)
        return limit is None or (n.load if held is None else held) <= limit - self.refill_step(n)

    def route(
        self,
        jobs: Sequence[tuple[str, JobSpec]],
        nodes: Sequence[NodeState],
        *,
        held: Mapping[str, int] | None = None,
        waiting: int = 0,
    ) -> tuple[list[tuple[str, str]], list[NodeState]]:
        """(job id, node id) for each job placed, and the nodes with those placements added.

        `held`, when given, is each node's current job count from a fresher source than the
        heartbeat (its queue's length read this pass); only the late-binding bound uses it,
        so a node that freed a slot since its heartbeat can take work at once. `waiting` is
        how many more jobs wait in the ingress behind `jobs` (what gates count).
        """
        placement = self._placement(nodes) if held is None else Placement(self, nodes, held)
        placement.unplaced = len(jobs) + waiting
        moves: list[tuple[str, str]] = []
        for job_id, job in jobs:
            node_id = placement.place(job)
            if node_id is not None:
                moves.append((job_id, node_id))
        return moves, placement.nodes()

    def ended(self, nodes: Sequence[NodeState], counts: Mapping[str, int]) -> list[NodeState]:
        """The nodes with runs that ended since they were read taken off: `counts` is runs
        ended per node id (ids not in `nodes` are ignored: a node that joined since, which the
        next read brings in). What a round calls between two reads, so a node is never full
        for jobs that already ended."""
        placement = self._placement(nodes)
        for node_id, n_ended in counts.items():
            placement.release(node_id, n_ended)
        return placement.nodes()

    def time_to_room(self, nodes: Sequence[NodeState]) -> float:
        """About how long until a node of `nodes` (each full) may take work again: the fewest
        seconds any accepting node needs to end the jobs that reopen it, at its service time.
        Only nodes refilled in batches count (refill_step > 1: their service time is known and
        short next to the dispatch latency, so this is a few latencies at most): 0 when any
        other node is full (each of its ends may reopen it), or one has room or no bound."""
        return self._placement(nodes).time_to_room()

    @property
    def gated(self) -> bool:
        """Whether the last placement held a slower class back (the loop then reads how many jobs
        wait in the ingress, which the gates count)."""
        return self._last is not None and bool(self._last.gates)

    def free_room(self, nodes: Sequence[NodeState]) -> int | None:
        """How many more jobs the accepting nodes may hold (late binding), or None when one of
        them is unbounded."""
        return self._placement(nodes).free_room

    def _placement(self, nodes: Sequence[NodeState]) -> Placement:
        """The placement state for `nodes`. When `nodes` is the list the last call returned,
        unchanged (the loop passes it back round after round until the next snapshot), that
        call's state carries on: it is what a fresh one would build from the list, without
        O(nodes) work per round."""
        last = self._last
        if last is None or not last.continues(self, nodes):
            last = self._last = Placement(self, nodes, None)
        return last


class Placement:
    """Every node as the placements so far left it: the state behind `Router.route`.

    Same choices as asking the policy about every job over the nodes with room, the records
    with each placement added, in less time. Records are immutable: each node's load with the
    placements is a tally kept here (`_load`), folded into new records (`with_extra_load`, one
    per node placed on since the last fold) only when records are needed: by the policy, for
    a job with needs, and by `nodes()`. A job with no needs (no model, affinity or GPU memory)
    under a lowest-score policy takes the top of the policy's own Ranking of the nodes with
    room, kept from job to job: each placement re-scores the one node it changed. The nodes
    with room are kept as an ordered set rather than rebuilt per job.
    """

    def __init__(self, router: Router, nodes: Sequence[NodeState], held: Mapping[str, int] | None) -> None:
        self._router = router
        self._config = (router.policy, router.prefetch, router.max_node_queue, router.affinity_epsilon)
        self._state = {n.node_id: n for n in nodes}  # each node's record as of the last fold
        self._load = {node_id: n.load for node_id, n in self._state.items()}  # the tally: placements counted
        self._placed: set[str] = set()  # nodes whose tally has moved past their record (see _fold)
        self._handed_out: tuple[NodeState, ...] = tuple(nodes)  # the list a later call may pass back
        self._limit = {node_id: router.limit(n) for node_id, n in self._state.items()}
        self._held = {node_id: n.load for node_id, n in self._state.items()}
        if held is not None:
            self._held.update((node_id, count) for node_id, count in held.items() if node_id in self._state)
        self._step = {node_id: router.refill_step(n) for node_id, n in self._state.items()}
        self._open = {node_id: None for node_id, limit in self._limit.items()  # an ordered set: state order
                      if limit is None or self._held[node_id] <= limit - self._step[node_id]}  # fmt: skip
        self._rank = ranking_of(router.policy)
        self._ranking: Ranking | None = None  # built for the first job with no needs
        gates = getattr(router.policy, "gates", None)
        self.gates: dict[str, int] = gates(nodes, router.arrival_rate) if gates is not None else {}
        self._levels = sorted(set(self.gates.values()))  # the thresholds in use
        self.unplaced = 0  # jobs of the current route call not yet placed, plus those behind them
        self._queued = sum(max(0, n.load - n.capacity) for n in nodes) if self.gates else 0  # in node queues
        self._level = 0  # the waiting count the ranking's gated nodes were chosen for
        self.free_room: int | None = 0  # what Router.free_room reports, kept up to date
        for node_id, n in self._state.items():
            if n.accepting and node_id in self._open:
                limit = self._limit[node_id]
                if limit is None:
                    self.free_room = None
                    break
                self.free_room += limit - self._held[node_id]

    def continues(self, router: Router, nodes: Sequence[NodeState]) -> bool:
        """Whether `nodes` is exactly what this state last handed out, under the same settings."""
        policy, *settings = self._config
        same = router.policy is policy and settings == [router.prefetch, router.max_node_queue, router.affinity_epsilon]
        return same and len(nodes) == len(self._handed_out) and all(map(operator.is_, nodes, self._handed_out))

    def nodes(self) -> list[NodeState]:
        """Every node's record with the placements so far."""
        self._fold()
        out = list(self._state.values())
        self._handed_out = tuple(out)
        return out

    def place(self, job: JobSpec) -> str | None:
        """The node `job` goes to (its placement counted), or None to leave it in the ingress."""
        ranking, rank = self._ranking, self._rank
        if (rank is not None and job.model is None and job.affinity is None and job.gpu_mem_gib == 0.0
                and job.backend == PYTHON):  # fmt: skip
            if self.gates:
                self._follow_gates()
                ranking = self._ranking
            if ranking is None:  # kept for every later job with no needs: they all have the same candidates
                level = self._level = self.unplaced + self._queued
                ranking = self._ranking = rank(job, [n for n in self._room() if self.gates.get(n.node_id, 1) <= level])
            node_id = ranking.lowest()  # the policy's choice among the nodes with room
            ranked = True
        else:
            node_id = self._choose(job)
            ranked = ranking is not None and node_id is not None and node_id in ranking
        if node_id is None:
            return None
        self._placed.add(node_id)
        self.unplaced -= 1
        if self.gates and self._load[node_id] >= self._state[node_id].capacity:
            self._queued += 1  # it waits on the node: still waiting, as the gates count
        load = self._load[node_id] = self._load[node_id] + 1
        held = self._held[node_id] = self._held[node_id] + 1
        limit = self._limit[node_id]
        full = False
        if limit is not None:
            if self.free_room is not None and self._state[node_id].accepting:
                self.free_room -= 1
            if held >= limit:
                del self._open[node_id]
                full = True
        if ranked and ranking is not None:
            if full:
                ranking.drop(node_id)
            else:
                ranking.rescore(node_id, load)
        return node_id

    def release(self, node_id: str, n_ended: int) -> None:
        """`n_ended` runs ended on `node_id`: its load and held count drop (never below 0), and
        a node that was full takes work again once enough of it is free (Router.refill_step)."""
        if node_id not in self._state or n_ended <= 0:
            return
        self._placed.add(node_id)
        if self.gates:
            capacity, load = self._state[node_id].capacity, self._load[node_id]
            self._queued -= max(0, load - capacity) - max(0, load - n_ended - capacity)
        self._load[node_id] = max(0, self._load[node_id] - n_ended)
        before = self._held[node_id]
        held = self._held[node_id] = max(0, before - n_ended)
        limit = self._limit[node_id]
        if limit is None:
            return
        freed = 0  # room it adds: what it freed while open, all it has when it opens again
        if node_id in self._open:
            freed = before - held
        elif held <= limit - self._step[node_id]:  # open again, in state order (policies break ties by it)
            self._open = {i: None for i in self._state if i == node_id or i in self._open}
            freed = limit - held
        if self.free_room is not None and self._state[node_id].accepting:
            self.free_room += freed
        ranking = self._ranking
        gated_off = bool(self.gates) and self.gates.get(node_id, 1) > self._level  # it waits for its class to open
        if ranking is not None and not gated_off:
            if not ranking.ranks(node_id):  # it had no room when the ranking was built: rank anew
                self._ranking = None
            elif node_id in self._open:  # re-scored at its new load (ranked again if it was dropped)
                ranking.rescore(node_id, self._load[node_id])

    def _follow_gates(self) -> None:
        """Bring the ranking to the jobs waiting now: a class whose threshold is no longer met
        leaves it; one whose threshold is met again has the ranking built anew."""
        waiting, level, ranking = self.unplaced + self._queued, self._level, self._ranking
        if ranking is None or waiting == level:
            return
        if any(level < t <= waiting for t in self._levels):
            self._ranking = None
        elif any(waiting < t <= level for t in self._levels):
            for node_id, t in self.gates.items():
                if waiting < t <= level:
                    ranking.drop(node_id)
        self._level = waiting

    def time_to_room(self) -> float:
        """See Router.time_to_room."""
        soonest = math.inf
        for node_id, n in self._state.items():
            limit = self._limit[node_id]
            if not n.accepting:
                continue
            if limit is None or node_id in self._open or self._step[node_id] == 1:
                return 0.0
            to_end = self._held[node_id] - (limit - self._step[node_id])
            soonest = min(soonest, to_end * n.service_time_s / max(1, n.capacity))
        return 0.0 if soonest == math.inf else soonest

    def _room(self) -> list[NodeState]:
        """The records of the nodes with room, placements so far included."""
        self._fold()
        return [self._state[i] for i in self._open]

    def _choose(self, job: JobSpec) -> str | None:
        """The affinity ring's node, else the policy's choice."""
        room = self._room()
        if job.affinity is not None and room:
            ring = eligible(job, list(self._state.values()))
            node_id = pick_affine(job.affinity, ring, self._open.keys(), self._router.affinity_epsilon)
            if node_id is not None:
                return node_id
        return self._router.policy.choose(job, room)

    def _fold(self) -> None:
        """Fold the tally into the records: a new record for each node placed on since."""
        if self._placed:
            state, load = self._state, self._load
            for node_id in self._placed:
                n = state[node_id]
                state[node_id] = n.with_extra_load(load[node_id] - n.load)
            self._placed.clear()
