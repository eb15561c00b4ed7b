"""Routing policies: pure functions of a job and an immutable snapshot of nodes.

Each policy filters (`candidates`: `eligible`, then model affinity), scores and picks, and
returns a node id, or None to leave the job in the ingress (late binding). No Redis here:
the dispatcher, the unit tests and the simulator run the same objects. Randomness comes in
as an `rng`; ties break by node id, so a snapshot always gives the same answer for the
same rng state.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import SettingsError
from .models import JobSpec, NodeState


class Policy(Protocol):
    name: str

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None: ...


def eligible(job: JobSpec, nodes: Sequence[NodeState]) -> list[NodeState]:
    """Nodes that may take `job` at all: accepting (alive, healthy, neither draining nor
    ejected) with enough free GPU memory."""
    return [n for n in nodes if n.accepting and n.gpu_mem_free_gib >= job.gpu_mem_gib]


def candidates(job: JobSpec, nodes: Sequence[NodeState]) -> list[NodeState]:
    """The nodes a policy picks among: the eligible ones, narrowed to those that hold the
    job's `model` loaded when any does (a warm start beats a cold load). The router's
    late-binding bound is what spills a popular model over to cold nodes."""
    found = eligible(job, nodes)
    if job.model is not None:
        warm = [n for n in found if job.model in n.models]
        if warm:
            return warm
    return found


def weighted_draw(rng: random.Random, nodes: Sequence[NodeState], weights: Sequence[float]) -> str:
    """Draw one node in proportion to its weight (nodes sorted by id, so draws are repeatable)."""
    return rng.choices([n.node_id for n in nodes], weights=weights, k=1)[0]


def service_rate(n: NodeState) -> float:
    """Jobs per second the node completes when busy: its slots over its EWMA service time.

    The EWMA is measured on the node, so it already carries the node's speed."""
    return n.capacity / n.service_time_s


def expected_delay_s(n: NodeState) -> float:
    """Seconds until one more job on `n` would finish: (queued + running + 1) / service rate."""
    return (n.queued + n.running + 1) * n.service_time_s / n.capacity


def _by_id(nodes: Sequence[NodeState]) -> list[NodeState]:
    return sorted(nodes, key=lambda n: n.node_id)


@dataclass
class RandomChoice:
    """A uniformly random eligible node: the baseline every load-balancing paper compares against."""

    rng: random.Random = field(default_factory=random.Random)
    name = "random"

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        found = _by_id(candidates(job, nodes))
        return self.rng.choice(found).node_id if found else None


@dataclass
class RoundRobin:
    """Eligible nodes in turn, in node-id order; a node that is skipped (full, draining) loses
    its turn rather than being owed one."""

    name = "round-robin"
    _last: str | None = field(default=None, init=False, repr=False)

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        ids = sorted(n.node_id for n in candidates(job, nodes))
        if not ids:
            return None
        i = 0 if self._last is None else bisect.bisect_right(ids, self._last) % len(ids)
        self._last = ids[i]
        return ids[i]


@dataclass
class WeightedRoundRobin:
    """Smooth weighted round robin (nginx): every pick adds each node's static weight to its
    running credit, the node with the most credit wins and pays back the total. Over any
    window a node gets its weight's share, interleaved rather than in bursts."""

    name = "weighted-round-robin"
    _credit: dict[str, float] = field(default_factory=dict, init=False, repr=False)

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        found = [n for n in _by_id(candidates(job, nodes)) if n.weight > 0]
        if not found:
            return None
        credit = self._credit
        for n in found:
            credit[n.node_id] = credit.get(n.node_id, 0.0) + n.weight
        best = max(found, key=lambda n: credit[n.node_id])  # first max = lowest id on a tie
        credit[best.node_id] -= sum(n.weight for n in found)
        return best.node_id


class LowestScore:
    """A policy that takes the candidate with the lowest `score`, a tuple that ends in the node
    id (so ties go to the lowest id). A node's score depends on that node alone, so the router
    keeps the nodes in a heap by score and, after a placement, re-scores only the node that
    changed: O(log nodes) per job instead of a scan (router.Placement)."""

    def score(self, n: NodeState) -> tuple[Any, ...]:
        raise NotImplementedError

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        found = candidates(job, nodes)
        if not found:
            return None
        return min(found, key=self.score).node_id


def lowest_score(policy: Policy) -> Callable[[NodeState], tuple[Any, ...]] | None:
    """The policy's score when its choice is the plain lowest score (LowestScore.choose, not
    overridden), so the router may pick with a heap; else None."""
    if isinstance(policy, LowestScore) and getattr(type(policy), "choose", None) is LowestScore.choose:
        return policy.score
    return None


@dataclass
class LeastConnections(LowestScore):
    """The node with the fewest jobs queued plus running; ties go to the lowest node id."""

    name = "least-connections"

    def score(self, n: NodeState) -> tuple[int, str]:
        return n.queued + n.running, n.node_id


@dataclass
class ShortestResponseTime(LowestScore):
    """The node with the lowest EWMA service time; fewer jobs, then node id, break ties.

    It ignores queue length, so on its own it herds onto the fastest node; it is sound
    only behind the router's late-binding bound, which turns it into "fastest node with room"."""

    name = "shortest-response-time"

    def score(self, n: NodeState) -> tuple[float, int, str]:
        return n.service_time_s, n.queued + n.running, n.node_id


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
        found = _by_id(candidates(job, nodes))
        if not found:
            return None
        return weighted_draw(self.rng, found, [self.weight(n) for n in found])


@dataclass
class PowerOfTwo:
    """Sample two distinct eligible nodes in proportion to their service rate, keep the one
    with the shorter expected delay (ties: node id). Sampling by rate, not uniformly, keeps
    mixed fleets stable: on speeds 1,1,1,1,2,2,4,8 uniform pairs drawn among the six slow
    nodes would overload them above load ~0.71."""

    rng: random.Random = field(default_factory=random.Random)
    name = "power-of-two"

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        found = _by_id(candidates(job, nodes))
        if len(found) < 2:
            return found[0].node_id if found else None
        rates = [service_rate(n) for n in found]
        if min(rates) == max(rates):
            a, b = self.rng.sample(found, 2)
        else:
            i = self.rng.choices(range(len(found)), weights=rates, k=1)[0]
            rates[i] = 0.0
            j = self.rng.choices(range(len(found)), weights=rates, k=1)[0]
            a, b = found[i], found[j]
        return min(a, b, key=lambda n: (expected_delay_s(n), n.node_id)).node_id


@dataclass
class ShortestExpectedDelay(LowestScore):
    """The node where one more job would finish soonest, (queued + running + 1) / service
    rate; ties go to the lowest node id. The default: on a mixed fleet it waits for a fast
    node rather than start on an idle slow one when that finishes sooner."""

    name = "shortest-expected-delay"

    def score(self, n: NodeState) -> tuple[float, str]:
        return (n.queued + n.running + 1) * n.service_time_s / n.capacity, n.node_id  # expected_delay_s, inlined


POLICY_NAMES = (
    "random",
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "shortest-response-time",
    "load-aware",
    "power-of-two",
    "shortest-expected-delay",
)
DEFAULT_POLICY = "shortest-expected-delay"


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
    if name == "random":
        return RandomChoice(rng=rng)
    if name == "round-robin":
        return RoundRobin()
    if name == "weighted-round-robin":
        return WeightedRoundRobin()
    if name == "least-connections":
        return LeastConnections()
    if name == "shortest-response-time":
        return ShortestResponseTime()
    if name == "load-aware":
        return LoadAware(alpha=alpha, beta=beta, gamma=gamma, rng=rng)
    if name == "power-of-two":
        return PowerOfTwo(rng=rng)
    if name == "shortest-expected-delay":
        return ShortestExpectedDelay()
    raise SettingsError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")
