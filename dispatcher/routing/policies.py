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
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any, Protocol

from ..errors import SettingsError
from .models import OPENAI, PYTHON, JobSpec, NodeState
from .thresholds import best_thresholds, speed_classes


class Policy(Protocol):
    name: str

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None: ...


def eligible(job: JobSpec, nodes: Sequence[NodeState]) -> list[NodeState]:
    """Nodes that may take `job` at all: accepting (alive, healthy, neither draining nor
    ejected), of the job's backend, with enough free GPU memory."""
    return [n for n in nodes
            if n.accepting and n.backend == job.backend and n.gpu_mem_free_gib >= job.gpu_mem_gib]  # fmt: skip


def candidates(job: JobSpec, nodes: Sequence[NodeState]) -> list[NodeState]:
    """The nodes a policy picks among: the eligible ones, narrowed to those that hold the
    job's `model` loaded when any does (a warm start beats a cold load). The router's
    late-binding bound is what spills a popular model over to cold nodes. A forwarded request
    (backend OPENAI) goes only to nodes whose server lists its model: a forwarder cannot load
    one, so with none among `nodes` it waits in the ingress."""
    found = eligible(job, nodes)
    if job.model is not None:
        warm = [n for n in found if job.model in n.models]
        if warm or job.backend == OPENAI:
            return warm
    return found


def weighted_draw(rng: random.Random, nodes: Sequence[NodeState], weights: Sequence[float]) -> str:
    """Draw one node in proportion to its weight (nodes sorted by id, so draws are repeatable)."""
    return rng.choices([n.node_id for n in nodes], weights=weights, k=1)[0]


def service_rate(n: NodeState) -> float:
    """Jobs per second the node completes when busy: its slots over its EWMA service time.

    The EWMA is measured on the node, so it already carries the node's speed."""
    return n.capacity / n.service_time_s


def expected_delay_s(n: NodeState, load: int, service_time_s: float | None = None) -> float:
    """Seconds until one more job on `n` would finish while it holds `load` jobs (its own:
    `n.load`): (load + server_waiting + 1) / service rate, at `service_time_s` per job when
    given (else the heartbeat's). `server_waiting` is 0 but on a
    forwarder whose server exports its own queue (vLLM's num_requests_waiting): requests that
    wait there, whoever sent them, are ahead of one more; a saturated server looks so at once."""
    service_s = n.service_time_s if service_time_s is None else service_time_s
    return (load + n.server_waiting + 1) * service_s / n.capacity


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
    """A policy that takes the candidate with the lowest `score`. A score depends on the node's
    own figures and the jobs it holds (`load`), and ends in the node id, so ties go to the
    lowest id. Subclasses define `score` only: `choose` and `ranking` are the one place the
    choice is made, for one job or for many (the router places a batch through `ranking`)."""

    def score(self, n: NodeState, load: int) -> tuple[Any, ...]:
        """Where `n` ranks while it holds `load` jobs; lower is better."""
        raise NotImplementedError

    def ranking(self, job: JobSpec, nodes: Sequence[NodeState]) -> Ranking:
        """The candidates for `job` among `nodes`, by score, for choosing again as loads change."""
        return Ranking(self.score, candidates(job, nodes))

    def choose(self, job: JobSpec, nodes: Sequence[NodeState]) -> str | None:
        return self.ranking(job, nodes).lowest()


class Ranking:
    """Nodes by a LowestScore policy's score, lowest first, re-scored as their loads change.

    A heap of (score, node order, version, node id): node order breaks a tie as min() over
    `nodes` would, and an entry whose version is not its node's latest (re-scored or dropped
    since) is skipped when it surfaces. Versions come from one counter, so a node dropped and
    re-scored later never revives an old entry. O(log nodes) per choice, where a scan is
    O(nodes).
    """

    def __init__(self, score: Callable[[NodeState, int], tuple[Any, ...]], nodes: Sequence[NodeState]) -> None:
        self._score = score
        self._node = {n.node_id: (n, i) for i, n in enumerate(nodes)}  # the record scored, its order
        self._version = dict.fromkeys(self._node, 0)
        self._changes = 0  # the last version handed out
        self._heap = [(score(n, n.load), i, 0, n.node_id) for i, n in enumerate(nodes)]
        heapify(self._heap)

    def __contains__(self, node_id: str) -> bool:
        return self._version.get(node_id, -1) >= 0

    def ranks(self, node_id: str) -> bool:
        """Whether `node_id` was among the nodes ranked (dropped since or not)."""
        return node_id in self._node

    def lowest(self) -> str | None:
        """The node with the lowest score now, or None when none is left."""
        heap, version = self._heap, self._version
        while heap:
            _, _, seen, node_id = heap[0]
            if seen == version[node_id]:
                return node_id
            heappop(heap)
        return None

    def rescore(self, node_id: str, load: int) -> None:
        """`node_id` (one ranked) holds `load` jobs now; its record's other figures stand. A
        dropped node is ranked again."""
        self._changes += 1
        seen = self._version[node_id] = self._changes
        n, order = self._node[node_id]
        heap = self._heap
        if heap and heap[0][3] == node_id:  # the usual case: the node just chosen
            heapreplace(heap, (self._score(n, load), order, seen, node_id))
        else:
            heappush(heap, (self._score(n, load), order, seen, node_id))

    def drop(self, node_id: str) -> None:
        """Take `node_id` out (it may take no more); its entries are skipped from now on."""
        self._version[node_id] = -1


def ranking_of(policy: Policy) -> Callable[[JobSpec, Sequence[NodeState]], Ranking] | None:
    """The policy's `ranking` when its choice is the plain lowest score (LowestScore.choose, not
    overridden), so a caller may keep one ranking for many jobs; else None."""
    if isinstance(policy, LowestScore) and getattr(type(policy), "choose", None) is LowestScore.choose:
        return policy.ranking
    return None


@dataclass
class LeastConnections(LowestScore):
    """The node with the fewest jobs queued plus running; ties go to the lowest node id."""

    name = "least-connections"

    def score(self, n: NodeState, load: int) -> tuple[int, str]:
        return load, n.node_id


@dataclass
class ShortestResponseTime(LowestScore):
    """The node with the lowest EWMA service time; fewer jobs, then node id, break ties.

    It ignores queue length, so on its own it herds onto the fastest node; it is sound
    only behind the router's late-binding bound, which turns it into "fastest node with room"."""

    name = "shortest-response-time"

    def score(self, n: NodeState, load: int) -> tuple[float, int, str]:
        return n.service_time_s, load, n.node_id


@dataclass
class LoadAware:
    """The article's AI load-aware weight W = 1 / (alpha*gpu + beta*mem + gamma + kv*kv_cache),
    drawn in proportion: a weighted draw rather than argmax, so nodes whose utilization figures
    are a heartbeat old do not all lose (or win) at once. `kv_cache` is a forwarder's server's
    KV-cache use, 0..1 (llm-d's KV-cache scorer's signal: a full cache preempts or queues); 0 on
    every other node, where W is the article's."""

    alpha: float = 0.6
    beta: float = 0.3
    gamma: float = 0.1
    kv: float = 0.5
    rng: random.Random = field(default_factory=random.Random)
    name = "load-aware"

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.beta < 0 or self.kv < 0:
            raise SettingsError(f"load-aware: alpha, beta and kv must be >= 0 (got alpha={self.alpha}, "
                                f"beta={self.beta}, kv={self.kv})")  # fmt: skip
        if self.gamma <= 0:
            raise SettingsError(f"load-aware: gamma must be > 0, or an idle node's weight is infinite "
                                f"(got {self.gamma})")  # fmt: skip

    def weight(self, n: NodeState) -> float:
        return 1.0 / (self.alpha * n.gpu_util + self.beta * n.mem_util + self.gamma + self.kv * n.kv_cache_usage)

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
        return min(a, b, key=lambda n: (expected_delay_s(n, n.load), n.node_id)).node_id


@dataclass
class ShortestExpectedDelay(LowestScore):
    """The node where one more job would finish soonest, (queued + running + 1) / service
    rate; ties go to the lowest node id. The default: on a mixed fleet it waits for a fast
    node rather than start on an idle slow one when that finishes sooner."""

    name = "shortest-expected-delay"

    def score(self, n: NodeState, load: int) -> tuple[float, str]:
        return expected_delay_s(n, load), n.node_id


RATE_SMOOTHING = 0.02  # SpeedThresholds: the weight of a node's latest rate in its smoothed one, per read
RESOLVE_RATE_MOVE = 0.15  # thresholds are solved again when a class's rate moves by this share...
RESOLVE_LOAD_MOVE = 0.05  # ...or the fleet's load by this much, or the classes change...
RESOLVE_MIN_READS = 20  # ...but not within this many reads of the last solve (3 s of 150 ms snapshots),
# unless a node came or went


@dataclass
class SpeedThresholds(ShortestExpectedDelay):
    """Shortest expected delay among the nodes that may take work, where a slower speed class
    may take a job only when enough jobs wait (thresholds.py: the optimal rule for a mixed
    fleet, solved from the live service times and the measured arrival rate). The fastest
    class always may; on a fleet of one speed class this is shortest-expected-delay. The
    router applies the gates (`gates`) to jobs with no needs; a job that names a model,
    affinity or GPU memory is placed by shortest expected delay alone, since its candidates
    are not the whole fleet. The default."""

    name = "speed-thresholds"
    _basis: tuple[tuple[tuple[str, ...], ...], tuple[float, ...], float] | None = field(
        default=None, init=False, repr=False)  # fmt: skip
    _gates: dict[str, int] = field(default_factory=dict, init=False, repr=False)
    _rates: dict[str, float] = field(default_factory=dict, init=False, repr=False)  # smoothed, per node
    _reads: int = field(default=0, init=False, repr=False)  # gates asked for since the last solve
    _smoothed: bool = field(default=False, init=False, repr=False)  # scores use the smoothed rates (mixed fleet)

    def score(self, n: NodeState, load: int) -> tuple[float, str]:
        """shortest-expected-delay's score; on a mixed fleet with the node's smoothed rate, so a
        slow node whose last few runs were short does not outrank a faster one it is not."""
        rate = self._rates.get(n.node_id) if self._smoothed else None
        return expected_delay_s(n, load, None if rate is None else 1.0 / rate), n.node_id

    def gates(self, nodes: Sequence[NodeState], arrival_rate: float) -> dict[str, int]:
        """Node id -> how many jobs must wait (the one it would take included) before it may take
        one, for the nodes whose threshold is above 1 (none on a one-class fleet). A node's rate
        is its heartbeat's service time smoothed over reads (RATE_SMOOTHING: an EWMA of run times
        moves by a third from beat to beat), and the thresholds are solved again only when the
        classes, a class's rate or the load moved enough (RESOLVE_*), not at every read."""
        before, smoothed = self._rates, {}  # rebuilt per read: a node gone is forgotten
        members = []
        for n in nodes:
            if n.accepting and n.backend == PYTHON:
                rate, seen = 1.0 / n.service_time_s, before.get(n.node_id)
                smoothed[n.node_id] = rate = rate if seen is None else seen + RATE_SMOOTHING * (rate - seen)
                members.append((n.node_id, rate, n.capacity))
        self._rates = smoothed
        classes = speed_classes(members)
        if len(classes) < 2 or arrival_rate <= 0:  # one speed, or no rate measured yet: nothing to hold back
            self._basis, self._gates, self._smoothed = None, {}, len(classes) > 1
            return self._gates
        self._smoothed = True
        ids = tuple(c.node_ids for c in classes)
        rates = tuple(c.rate for c in classes)
        load = arrival_rate / sum(c.rate * c.slots for c in classes)
        self._reads += 1
        if not self._resolved_for(ids, rates, load):
            thresholds = best_thresholds(rates, [c.slots for c in classes], arrival_rate)
            self._basis, self._reads = (ids, rates, load), 0
            self._gates = {node_id: t for c, t in zip(classes, thresholds) if t > 1 for node_id in c.node_ids}
        return self._gates

    def _resolved_for(self, ids: tuple[tuple[str, ...], ...], rates: tuple[float, ...], load: float) -> bool:
        """Whether the thresholds in use stand: solved for these nodes, and either too recently
        to solve again (RESOLVE_MIN_READS) or for classes and a load that have not moved enough."""
        if self._basis is None:
            return False
        old_ids, old_rates, old_load = self._basis
        if sorted(i for c in old_ids for i in c) != sorted(i for c in ids for i in c):  # a node came or went
            return False
        return self._reads < RESOLVE_MIN_READS or (
            old_ids == ids and abs(load - old_load) < RESOLVE_LOAD_MOVE
            and all(abs(r - o) <= RESOLVE_RATE_MOVE * o for r, o in zip(rates, old_rates)))  # fmt: skip


POLICY_NAMES = (
    "random",
    "round-robin",
    "weighted-round-robin",
    "least-connections",
    "shortest-response-time",
    "load-aware",
    "power-of-two",
    "shortest-expected-delay",
    "speed-thresholds",
)
DEFAULT_POLICY = "speed-thresholds"


def make_policy(
    name: str,
    *,
    alpha: float = 0.6,
    beta: float = 0.3,
    gamma: float = 0.1,
    kv: float = 0.5,
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
        return LoadAware(alpha=alpha, beta=beta, gamma=gamma, kv=kv, rng=rng)
    if name == "power-of-two":
        return PowerOfTwo(rng=rng)
    if name == "shortest-expected-delay":
        return ShortestExpectedDelay()
    if name == "speed-thresholds":
        return SpeedThresholds()
    raise SettingsError(f"unknown policy {name!r}; choose one of: {', '.join(POLICY_NAMES)}")
