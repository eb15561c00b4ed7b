"""Routes a batch of ingress jobs over a node snapshot: late binding, in-flight accounting
and session persistence.

Pure, like the policies it drives: the dispatcher loop and the simulator share it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .affinity import DEFAULT_AFFINITY_EPSILON, pick_affine
from .models import JobSpec, NodeState
from .policies import Policy, eligible


@dataclass
class Router:
    """Places jobs one by one; each placement counts as load on its node for the next pick,
    so a burst between two heartbeats is spread, not herded onto the node that looked idle.

    A node holds at most `capacity + prefetch` jobs (late binding: the rest wait in the
    ingress for whichever node frees up first); `max_node_queue=0` lifts the bound.
    A job with an `affinity` key goes to its rendezvous node unless that node is over
    (1 + affinity_epsilon) x the mean load (then the next in its rendezvous order); the
    policy decides only when no node in that order may take it.
    """

    policy: Policy
    prefetch: int = 2
    max_node_queue: int | None = None  # None: capacity + prefetch; 0: unbounded; N: at most N
    affinity_epsilon: float = DEFAULT_AFFINITY_EPSILON

    def limit(self, n: NodeState) -> int | None:
        """The most jobs `n` may hold, or None when unbounded."""
        if self.max_node_queue == 0:
            return None
        return n.capacity + self.prefetch if self.max_node_queue is None else self.max_node_queue

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
        state = {n.node_id: n for n in nodes}
        count = dict(held) if held is not None else None
        moves: list[tuple[str, str]] = []
        for job_id, job in jobs:
            if count is None:
                room = [n for n in state.values() if self.has_room(n)]
            else:
                room = [n for n in state.values() if self.has_room(n, count.get(n.node_id, n.load))]
            node_id = None
            if job.affinity is not None and room:
                ring = eligible(job, list(state.values()))
                node_id = pick_affine(job.affinity, ring, {n.node_id for n in room}, self.affinity_epsilon)
            if node_id is None:
                node_id = self.policy.choose(job, room)
            if node_id is None:
                continue
            moves.append((job_id, node_id))
            if count is not None:
                count[node_id] = count.get(node_id, state[node_id].load) + 1
            state[node_id] = state[node_id].with_extra_load(1)
        return moves, list(state.values())
