"""Routes a batch of ingress jobs over a node snapshot: late binding plus in-flight accounting.

Pure, like the policies it drives: the dispatcher loop and the simulator share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .models import JobSpec, NodeState
from .policies import Policy


@dataclass
class Router:
    """Places jobs one by one; each placement counts as load on its node for the next pick,
    so a burst between two heartbeats is spread, not herded onto the node that looked idle.

    A node holds at most `capacity + prefetch` jobs (late binding: the rest wait in the
    ingress for whichever node frees up first); `max_node_queue=0` lifts the bound.
    """

    policy: Policy
    prefetch: int = 2
    max_node_queue: int | None = None  # None: capacity + prefetch; 0: unbounded; N: at most N

    def has_room(self, n: NodeState) -> bool:
        if self.max_node_queue == 0:
            return True
        limit = n.capacity + self.prefetch if self.max_node_queue is None else self.max_node_queue
        return n.load < limit

    def route(
        self, jobs: Sequence[tuple[str, JobSpec]], nodes: Sequence[NodeState]
    ) -> tuple[list[tuple[str, str]], list[NodeState]]:
        """(job id, node id) for each job placed, and the nodes with those placements added."""
        state = {n.node_id: n for n in nodes}
        moves: list[tuple[str, str]] = []
        for job_id, job in jobs:
            node_id = self.policy.choose(job, [n for n in state.values() if self.has_room(n)])
            if node_id is None:
                continue
            moves.append((job_id, node_id))
            state[node_id] = state[node_id].with_extra_load(1)
        return moves, list(state.values())
