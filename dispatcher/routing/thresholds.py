"""Speed classes and their thresholds: when a slow node should take a job at all.

On a mixed fleet the job at the head of the ingress often finishes sooner by waiting for a fast
node than by starting at once on an idle slow one (the "slow server problem", Lin & Kumar 1984).
The optimal control then has a simple shape: nodes fall into speed classes, the fastest class
always takes work, and a slower class takes a job only when at least T_c jobs wait (the one it
would take included). This module finds those thresholds for a fleet's classes and its arrival
rate, exactly, by evaluating each threshold rule's Markov chain (below), and searching over
the rules. Pure: no Redis, no clock.

The chain. Each slot of class c completes jobs at rate mu_c (exponential run times, the mean
from the node's EWMA service time); jobs arrive as a Poisson stream at rate lambda; a freed slot
or an arrival starts the head job on the fastest class with an idle slot whose threshold the
queue meets. The state is (q waiting, busy slots per class). Once q >= max(T), every class is
busy and the chain is a birth-death tail (up lambda, down the fleet's whole rate), summed in
closed form; the states below it are solved by Gauss-Seidel sweeps of the balance equations.
A fleet with more than MAX_LEVEL_STATES combinations of busy slots is solved scaled down (every class's
slots and the arrival rate divided by one factor) and its thresholds scaled back up: a
threshold is a queue length that a fast class clears in about one slow run time, which grows
with the fast classes' total rate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import product

CLASS_RATIO = 1.5  # a node joins a class whose fastest slot is at most this many times faster than its own
MAX_CLASSES = 4  # more are merged, the two closest in rate first: the chain grows with each class
MAX_LEVEL_STATES = 120  # the most busy-slot combinations solved as they are; a bigger fleet is solved scaled down
MAX_LOAD = 0.98  # above this the thresholds of this load are used: every class is needed anyway
SWEEP_TOLERANCE = 1e-9  # Gauss-Seidel stops when no probability moves by more than this share
MAX_SWEEPS = 5_000


@dataclass(frozen=True)
class SpeedClass:
    """Nodes whose slots run at about the same rate: `rate` jobs per second per slot (the
    slot-weighted mean of its nodes'), `slots` their capacities summed."""

    rate: float
    slots: int
    node_ids: tuple[str, ...]


def speed_classes(nodes: Sequence[tuple[str, float, int]]) -> list[SpeedClass]:
    """(node id, per-slot rate, slots) -> classes, fastest first: walking down from the fastest
    node, a node joins the current class while the class's fastest rate is at most CLASS_RATIO
    times its own, and opens a new class otherwise; past MAX_CLASSES, the two neighbours whose
    rates are closest merge."""
    ordered = sorted(nodes, key=lambda n: (-n[1], n[0]))
    classes: list[list[tuple[str, float, int]]] = []
    for node in ordered:
        if classes and classes[-1][0][1] <= CLASS_RATIO * node[1]:
            classes[-1].append(node)
        else:
            classes.append([node])
    while len(classes) > MAX_CLASSES:
        closest = min(range(len(classes) - 1), key=lambda i: classes[i][-1][1] / classes[i + 1][0][1])
        classes[closest:closest + 2] = [classes[closest] + classes[closest + 1]]
    out = []
    for members in classes:
        slots = sum(n[2] for n in members)
        out.append(SpeedClass(sum(n[1] * n[2] for n in members) / slots, slots, tuple(n[0] for n in members)))
    return out


def best_thresholds(rates: Sequence[float], slots: Sequence[int], arrival_rate: float) -> tuple[int, ...]:
    """The threshold of each class (fastest first; the first is always 1) that minimises the mean
    number of jobs in the fleet, hence the mean time in system. `rates` are per-slot rates in
    jobs per second, `arrival_rate` jobs per second. One class, or no arrivals: all 1."""
    if len(rates) < 2 or arrival_rate <= 0:
        return (1,) * len(rates)
    capacity = sum(r * n for r, n in zip(rates, slots))
    load = min(MAX_LOAD, arrival_rate / capacity)
    scale = _scale_for(slots)
    if scale > 1:
        small = tuple(max(1, round(n / scale)) for n in slots)
        factor = sum(slots) / sum(small)
        found = _search(tuple(r / capacity for r in rates), small, load)
        return tuple(1 if t == 1 else max(1, round(t * factor)) for t in found)
    return _search(tuple(r / capacity for r in rates), tuple(slots), load)


def mean_jobs(rates: Sequence[float], slots: Sequence[int], arrival_rate: float, thresholds: Sequence[int],
              start: dict[tuple[int, ...], float] | None = None) -> float:  # fmt: skip
    """The long-run mean number of jobs in the fleet (waiting plus running) under `thresholds`;
    math.inf when the arrivals outrun the fleet. `start`, when given, is a distribution over
    states to begin the sweeps from (a neighbouring rule's), and is replaced by this one's."""
    return _Chain(tuple(rates), tuple(slots), arrival_rate, tuple(thresholds)).mean_jobs(start)


def _scale_for(slots: Sequence[int]) -> float:
    """1, or the factor to divide every class's slots by so that the chain's widest level (no
    job waiting: every busy-slot combination) stays within MAX_LEVEL_STATES, so a search takes
    well under a second."""
    scale = 1.0
    while math.prod(max(1, round(n / scale)) + 1 for n in slots) > MAX_LEVEL_STATES:
        scale *= 1.25
    return scale


@lru_cache(maxsize=256)
def _search(rates: tuple[float, ...], slots: tuple[int, ...], load: float) -> tuple[int, ...]:
    """Coordinate descent over non-decreasing threshold vectors, from all 1 (the central queue:
    every idle slot takes work): raise one class's threshold (and the slower ones' with it) while
    the mean falls. `rates` are scaled so the fleet's total is 1, so load is the arrival rate."""
    cost: dict[tuple[int, ...], float] = {}
    last: dict[tuple[int, ...], float] = {}  # the last rule's distribution: the next one starts from it

    def mean(t: tuple[int, ...]) -> float:
        if t not in cost:
            cost[t] = mean_jobs(rates, slots, load, t, last)
        return cost[t]

    best = (1,) * len(rates)
    improved = True
    while improved:
        improved = False
        for c in range(1, len(rates)):
            for step in (1, -1):
                while True:
                    t = _moved(best, c, step)
                    if t is None or mean(t) >= mean(best) or max(t) > _max_threshold(slots):
                        break
                    best, improved = t, True
    return best


def _max_threshold(slots: Sequence[int]) -> int:
    """The highest threshold searched: a few times the fleet's slots (the optimum for speeds
    1,1,1,1,2,2,4,8 is 5 at most)."""
    return 3 * sum(slots) + 3


def _moved(t: tuple[int, ...], c: int, step: int) -> tuple[int, ...] | None:
    """`t` with class c's threshold moved by `step`, the classes after it kept at least as high
    (slower classes never take work before faster ones); None if that leaves the valid range."""
    new = list(t)
    new[c] += step
    if new[c] < t[c - 1]:
        return None
    for i in range(c + 1, len(new)):
        new[i] = max(new[i], new[c])
    return tuple(new)


class _Chain:
    """The Markov chain of one threshold rule (the module docstring)."""

    def __init__(self, rates: tuple[float, ...], slots: tuple[int, ...], arrival_rate: float,
                 thresholds: tuple[int, ...]) -> None:  # fmt: skip
        self.rates, self.slots, self.arrival, self.t = rates, slots, arrival_rate, thresholds
        self.top = max(thresholds)  # from this queue length up every class is busy: the tail
        self.states = [s for q in range(self.top + 1) for s in self._level(q)]
        self.index = {s: i for i, s in enumerate(self.states)}

    def _level(self, q: int) -> list[tuple[int, ...]]:
        """The states with q waiting: a class whose threshold q meets is busy throughout."""
        ranges = [range(n, n + 1) if q >= t else range(n + 1) for n, t in zip(self.slots, self.t)]
        return [(q, *b) for b in product(*ranges)]

    def _settle(self, q: int, busy: list[int]) -> tuple[int, ...]:
        """Start waiting jobs on the fastest idle class whose threshold the queue meets."""
        c = 0
        while c < len(busy) and q > 0:
            if busy[c] < self.slots[c] and q >= self.t[c]:
                busy[c] += 1
                q -= 1
            else:
                c += 1
        return (q, *busy)

    def _moves(self, state: tuple[int, ...]) -> list[tuple[int, float]]:
        """(target state index, rate) for every way out of `state` inside the finite part."""
        q, busy = state[0], list(state[1:])
        out = []
        if q < self.top or any(b < n for b, n in zip(busy, self.slots)):
            out.append((self.index[self._settle(q + 1, list(busy))], self.arrival))
        for c, b in enumerate(busy):
            if b:
                after = list(busy)
                after[c] -= 1
                out.append((self.index[self._settle(q, after)], b * self.rates[c]))
        return out

    def mean_jobs(self, start: dict[tuple[int, ...], float] | None) -> float:
        capacity = sum(r * n for r, n in zip(self.rates, self.slots))
        if self.arrival >= capacity:
            return math.inf
        first = None if not start else [start.get(s, 0.0) + 1e-12 for s in self.states]
        pi = _stationary(len(self.states), [self._moves(s) for s in self.states], first)
        if start is not None:
            start.clear()
            start.update(zip(self.states, pi))
        rho = self.arrival / capacity
        top = pi[self.index[(self.top, *self.slots)]]  # the tail above: top * rho^k, k >= 1
        total = sum(pi) + top * rho / (1 - rho)
        jobs = sum(p * sum(s) for p, s in zip(pi, self.states))
        busy = sum(self.slots)
        tail = top * sum(rho**k * (self.top + k + busy) for k in range(1, 1 + _tail_terms(rho)))
        return (jobs + tail) / total


def _tail_terms(rho: float) -> int:
    """Enough geometric terms that the rest is below 1e-12 of the first."""
    return max(1, math.ceil(math.log(1e-12) / math.log(rho))) if rho > 0 else 1


def _stationary(n: int, moves: list[list[tuple[int, float]]], first: list[float] | None) -> list[float]:
    """The stationary distribution (summing to 1 over these states) of the chain whose state i
    leaves to j at rate r for each (j, r) in moves[i]: Gauss-Seidel sweeps of
    pi_j * out_j = sum of pi_i * r_ij, from `first` (else uniform)."""
    out = [sum(r for _, r in m) for m in moves]
    into: list[list[tuple[int, float]]] = [[] for _ in range(n)]
    for i, m in enumerate(moves):
        for j, r in m:
            into[j].append((i, r))
    pi = [1.0 / n] * n if first is None else [p / sum(first) for p in first]

    def sweep() -> float:
        moved = 0.0
        for j in range(n):
            if out[j] > 0:
                new = sum(pi[i] * r for i, r in into[j]) / out[j]
                moved = max(moved, abs(new - pi[j]))
                pi[j] = new
        total = sum(pi)
        for j in range(n):
            pi[j] /= total
        return moved / max(pi)

    for _ in range(MAX_SWEEPS):
        if sweep() < SWEEP_TOLERANCE:
            break
    return pi
