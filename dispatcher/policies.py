"""Routing policies: pure functions of a job and an immutable snapshot of nodes.

Each policy filters (`eligible`), scores and picks, and returns a node id, or None to leave
the job in the ingress (late binding). No Redis here: the dispatcher, the unit tests and the
simulator run the same objects. Randomness comes in as an `rng`; ties break by node id, so a
snapshot always gives the same answer for the same rng state.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .errors import SettingsError
from .models import JobSpec, NodeState


class Policy(Protocol):
    name: str

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None: ...


def eligible(job: JobSpec, nodes: Sequence[NodeState]) -> list[NodeState]:
    """Nodes that may take `job` at all: alive, not draining, enough free GPU memory."""
    return [n for n in nodes if n.alive and not n.draining and n.gpu_mem_free_gib >= job.gpu_mem_gib]


def weighted_draw(rng: random.Random, nodes: Sequence[NodeState], weights: Sequence[float]) -> str:
    """Draw one node in proportion to its weight (nodes sorted by id, so draws are repeatable)."""
    return rng.choices([n.node_id for n in nodes], weights=weights, k=1)[0]


@dataclass
class LoadAware:
    """The article's AI load-aware weight W = 1 / (alpha*gpu + beta*mem + gamma), drawn in
    proportion: a weighted draw rather than argmax, so nodes whose utilization figures are a
    heartbeat old do not all lose (or win) at once."""

    alpha: float = 0.6
    beta: float = 0.3
    gamma: float = 0.1
    rng: random.Random = field(default_factory=random.Random)
    name = "load-aware"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0:
            raise SettingsError(f"load-aware: alpha and beta must be >= 0 (got alpha={self.alpha}, beta={self.beta})")
        if self.gamma <= 0:
            raise SettingsError(f"load-aware: gamma must be > 0, or an idle node's weight is infinite (got {self.gamma})")

    def weight(self, n: NodeState) -> float:
        return 1.0 / (self.alpha * n.gpu_util + self.beta * n.mem_util + self.gamma)

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        candidates = sorted(eligible(job, nodes), key=lambda n: n.node_id)
        if not candidates:
            return None
        return weighted_draw(self.rng, candidates, [self.weight(n) for n in candidates])


@dataclass
class LeastConnections:
    """The node with the fewest jobs queued plus running; ties go to the lowest node id."""

    name = "least-connections"

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        candidates = eligible(job, nodes)
        if not candidates:
            return None
        return min(candidates, key=lambda n: (n.load, n.node_id)).node_id


POLICY_NAMES = ("load-aware", "least-connections")
DEFAULT_POLICY = "least-connections"


def make_policy(
    name: str,
    *,
    alpha: float = 0.6,
    beta: float = 0.3,
    gamma: float = 0.1,
    rng: random.Random | None = None,
) -> Policy:
    """The policy called `name`, configured; SettingsError names the choices when it is unknown."""
    rng = rng or random.Random()
    if name == "load-aware":
        return LoadAware(alpha=alpha, beta=beta, gamma=gamma, rng=rng)
    if name == "least-connections":
        return LeastConnections()
    raise SettingsError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")
