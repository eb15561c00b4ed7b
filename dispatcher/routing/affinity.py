"""Session persistence: rendezvous hashing with bounded loads.

A job's `affinity` key ranks every live node by a stable hash of (key, node id); the key
goes to the first node in that order whose load stays within (1 + epsilon) x the mean
(Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", SODA 2018).
A node that leaves takes only its own keys with it: every other key's first choice is
unchanged, because removing one node does not reorder the rest.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Sequence
from functools import lru_cache

from .models import NodeState

DEFAULT_AFFINITY_EPSILON = 0.25


@lru_cache(maxsize=1 << 16)
def rendezvous_score(key: str, node_id: str) -> int:
    """A stable 64-bit score of `key` on `node_id`: the same in every process and run,
    unlike Python's salted hash()."""
    digest = hashlib.blake2b(f"{key}\x00{node_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(key: str, node_ids: Collection[str]) -> list[str]:
    """`node_ids` from the key's first choice to its last (highest score first; node id
    breaks the vanishingly rare tie)."""
    return sorted(node_ids, key=lambda i: (-rendezvous_score(key, i), i))


def load_cap(total_load: int, n_nodes: int, epsilon: float) -> int:
    """The most jobs a node may hold after taking one more: ceil((1 + eps) x mean load),
    the mean counting the job being placed, so an idle fleet lets every node take one."""
    return max(1, math.ceil((1.0 + epsilon) * (total_load + 1) / max(1, n_nodes)))


def pick_affine(
    key: str, ring: Sequence[NodeState], open_ids: Collection[str], epsilon: float
) -> str | None:
    """The node for `key`: first in rendezvous order over `ring` (the eligible live nodes)
    that is in `open_ids` (may take a job now) and stays within the load cap; None when
    no such node exists and the policy must decide."""
    if not ring:
        return None
    cap = load_cap(sum(n.load for n in ring), len(ring), epsilon)
    by_id = {n.node_id: n for n in ring}
    for node_id in rendezvous_order(key, by_id):
        if node_id in open_ids and by_id[node_id].load + 1 <= cap:
            return node_id
    return None
