"""Routes a batch of ingress jobs over a node snapshot: late binding, in-flight accounting
and session persistence.

Pure, like the policies it drives: the dispatcher loop and the simulator share it.
"""

from __future__ import annotations

import heapq
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .affinity import DEFAULT_AFFINITY_EPSILON, pick_affine
from .models import JobSpec, NodeState
from .policies import Policy, eligible, lowest_score


@dataclass
class Router:
    """Places jobs one by one; each placement counts as load on its node for the next pick,
    so a burst between two heartbeats is spread, not herded onto the node that looked idle.

    A node holds at most `capacity + prefetch` jobs (late binding: the rest wait in the
    ingress for whichever node frees up first), or `capacity + batch_max` when its tasks
    batch more than `prefetch` jobs, so a full next batch waits while one runs;
    `max_node_queue=0` lifts the bound.
    A job with an `affinity` key goes to its rendezvous node unless that node is over
    (1 + affinity_epsilon) x the mean load (then the next in its rendezvous order); the
    policy decides only when no node in that order may take it.
    """

    policy: Policy
    prefetch: int = 2
    max_node_queue: int | None = None  # None: capacity + max(prefetch, batch_max); 0: unbounded; N: at most N
    affinity_epsilon: float = DEFAULT_AFFINITY_EPSILON
    _last: Placement | None = field(default=None, init=False, repr=False, compare=False)

    def limit(self, n: NodeState) -> int | None:
        """The most jobs `n` may hold, or None when unbounded."""
        if self.max_node_queue == 0:
            return None
        if self.max_node_queue is None:
            return n.capacity + (max(self.prefetch, n.batch_max) if n.batch_max > 1 else self.prefetch)
        return self.max_node_queue

    def has_room(self, n: NodeState, held: int | None = None) -> bool:
        """Whether `n` may take one more job; `held` overrides the snapshot's count."""
        limit = self.limit(n)
        return limit is None or (n.load if held is None else held) < limit

    def route(
        self,
        jobs: Sequence[tuple[str, JobSpec]],
        nodes: Sequence[NodeState],
        *,
        held: Mapping[str, int] | None = None,
    ) -> tuple[list[tuple[str, str]], list[NodeState]]:
        """(job id, node id) for each job placed, and the nodes with those placements added.

        `held`, when given, is each node's current job count from a fresher source than the
        heartbeat (its queue's length read this pass); only the late-binding bound uses it,
        so a node that freed a slot since its heartbeat can take work at once.
        """
        placement = self._placement(nodes) if held is None else Placement(self, nodes, held)
        moves: list[tuple[str, str]] = []
        for job_id, job in jobs:
            node_id = placement.place(job)
            if node_id is not None:
                moves.append((job_id, node_id))
        return moves, placement.nodes()

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

    Same choices as asking the policy about every job over the nodes with room, in less time.
    A job with no needs (no model, affinity or GPU memory) under a LowestScore policy, the
    default among them, takes the top of a heap of the nodes with room, keyed by (score, node
    order); a placement re-scores the one node it changed (entries of older versions are
    skipped when they surface). Other jobs and policies see the nodes with room, kept as an
    ordered set rather than rebuilt per job. A node's record is copied once per call.
    """

    def __init__(self, router: Router, nodes: Sequence[NodeState], held: Mapping[str, int] | None) -> None:
        self._router = router
        self._config = (router.policy, router.prefetch, router.max_node_queue, router.affinity_epsilon)
        self._state = {n.node_id: n for n in nodes}
        self._handed_out: tuple[NodeState, ...] = tuple(nodes)  # the list a later call may pass back
        self._limit = {node_id: router.limit(n) for node_id, n in self._state.items()}
        self._held = {node_id: n.load for node_id, n in self._state.items()}
        if held is not None:
            self._held.update((node_id, count) for node_id, count in held.items() if node_id in self._state)
        self._open = {node_id: None for node_id, limit in self._limit.items()  # an ordered set: state order
                      if limit is None or self._held[node_id] < limit}  # fmt: skip
        self._score = lowest_score(router.policy)
        self._version = dict.fromkeys(self._state, 0)
        self._copied: set[str] = set()  # records copied since the last nodes() (see _count_one)
        self._heap: list[tuple[Any, int, int, str]] | None = None  # built on the first job with no needs
        self.free_room: int | None = 0  # what Router.free_room reports, kept up to date
        for node_id, n in self._state.items():
            if n.accepting:
                limit = self._limit[node_id]
                if limit is None:
                    self.free_room = None
                    break
                self.free_room += max(0, limit - self._held[node_id])

    def continues(self, router: Router, nodes: Sequence[NodeState]) -> bool:
        """Whether `nodes` is exactly what this state last handed out, under the same settings."""
        policy, *settings = self._config
        same = router.policy is policy and settings == [router.prefetch, router.max_node_queue, router.affinity_epsilon]
        return same and len(nodes) == len(self._handed_out) and all(map(operator.is_, nodes, self._handed_out))

    def nodes(self) -> list[NodeState]:
        """The nodes now; their records are no longer this state's to change (copied afresh next time)."""
        out = list(self._state.values())
        self._handed_out = tuple(out)
        self._copied.clear()
        return out

    def place(self, job: JobSpec) -> str | None:
        """The node `job` goes to (its placement counted), or None to leave it in the ingress."""
        if self._score is not None and job.model is None and job.affinity is None and job.gpu_mem_gib == 0.0:
            return self._place_top(self._score)
        node_id = None
        room = [self._state[i] for i in self._open]
        if job.affinity is not None and room:
            ring = eligible(job, list(self._state.values()))
            node_id = pick_affine(job.affinity, ring, self._open.keys(), self._router.affinity_epsilon)
        if node_id is None:
            node_id = self._router.policy.choose(job, room)
        if node_id is not None:
            self._add(node_id)
        return node_id

    def _place_top(self, score: Callable[[NodeState], Any]) -> str | None:
        heap = self._heap if self._heap is not None else self._build_heap(score)
        version = self._version
        while heap:
            _, order, seen, node_id = heap[0]
            if seen != version[node_id]:  # re-scored since: a newer entry is in the heap
                heapq.heappop(heap)
                continue
            n = self._count_one(node_id)  # an accepting node with room (heap members are)
            held = self._held[node_id] = self._held[node_id] + 1
            version[node_id] = seen + 1
            limit = self._limit[node_id]
            if limit is not None:
                if self.free_room is not None:
                    self.free_room -= 1
                if held >= limit:
                    del self._open[node_id]
                    heapq.heappop(heap)
                    return node_id
            heapq.heapreplace(heap, (score(n), order, seen + 1, node_id))
            return node_id
        return None

    def _build_heap(self, score: Callable[[NodeState], Any]) -> list[tuple[Any, int, int, str]]:
        """Nodes with room that any job with no needs may take (candidates: accepting, with
        free GPU memory >= 0), keyed by (score, node order): node order breaks ties as min() does."""
        self._order = {node_id: i for i, node_id in enumerate(self._state)}
        self._heap = [(score(n), self._order[i], self._version[i], i)
                      for i in self._open if (n := self._state[i]).accepting and n.gpu_mem_free_gib >= 0.0]  # fmt: skip
        heapq.heapify(self._heap)
        return self._heap

    def _add(self, node_id: str) -> None:
        """Count one more job on `node_id`, chosen by the policy or the affinity ring."""
        n = self._count_one(node_id)
        held = self._held[node_id] = self._held[node_id] + 1
        self._version[node_id] += 1
        limit = self._limit[node_id]
        if limit is not None and self.free_room is not None and n.accepting:
            self.free_room -= 1
        if limit is not None and held >= limit:
            self._open.pop(node_id, None)
        elif self._heap is not None and self._score is not None and n.accepting and n.gpu_mem_free_gib >= 0.0:
            heapq.heappush(self._heap, (self._score(n), self._order[node_id], self._version[node_id], node_id))

    def _count_one(self, node_id: str) -> NodeState:
        """The node with one more job queued. Its first placement since nodes() copies the
        record (what `with_extra_load` does, without dataclasses.replace re-running __init__
        over every field: 0.7 us, not 7); later ones bump the copy's count in place, which is
        safe because the copy is this state's own until nodes() hands it out (0.1 us)."""
        n = self._state[node_id]
        if node_id in self._copied:
            n.__dict__["queued"] += 1
            return n
        copy = object.__new__(type(n))
        copy.__dict__.update(n.__dict__)
        copy.__dict__["queued"] = n.queued + 1
        self._state[node_id] = copy
        self._copied.add(node_id)
        return copy
