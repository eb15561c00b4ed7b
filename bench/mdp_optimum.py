"""Exact optimal routing for a fleet of heterogeneous single-slot servers: the "x optimal" reference.

Model (the slow-server problem of Lin & Kumar 1984, generalised to several servers). Server i
serves one job at a time, exponentially with rate s_i (the time unit is the mean service time on
a speed-1 server). Jobs arrive as a Poisson stream of rate lambda = load * sum(s_i) into one
central queue. At every event (arrival or completion) the controller chooses which waiting jobs to
start on which idle servers; it may leave a server idle on purpose. There is no preemption and no
migration. The objective is the long-run mean number of jobs in system L; the mean sojourn time is
L / lambda (Little). Servers of equal speed form a class, and the state is (q, b): q jobs waiting,
b_c busy servers in class c.

Method. The control problem is uniformised at rate 1.02 * (lambda + sum(s_i)) and written over
"pre-decision" states, a decision being a sequence of single assignments:

    V(q, b) = min( W(q, b), min_c V(q - 1, b + e_c) )    (c over the classes with an idle server)

where W(q, b) is the one-step cost-to-go of starting nothing more. Plain relative value iteration
on this Bellman operator T is exact but mixes slowly near saturation (for speeds 1,1,1,1,2,2,4,8
it needs 16,000 sweeps, 163 s, at load 0.9 and 67,000 sweeps, 18 minutes, at load 0.95 on one
core), so the default method is policy iteration, started from the central-queue policy below
(5-7 steps and under 0.2 s for that fleet at any of those loads):

* evaluation: the policy is collapsed onto its "tangible" states (those where it starts nothing
  more), and the Poisson equation  sum_y r_xy (h_y - h_x) = g - cost_x, h(0, 0) = 0  is solved
  exactly by sparse Gaussian elimination, eliminating the longest queues first, which keeps the
  fill-in to a band of a few levels;
* improvement: one Jacobi sweep of T on that h (keeping the current action on ties);
* certificate: the same sweep gives the span bounds lambda_u * [min(Th - h), max(Th - h)] on the
  optimal average cost (Odoni's bounds, valid for any h). Iteration stops when the policy is
  stable or the bounds agree to a relative 1e-7; if they still do not, relative value iteration
  continues from h until they do.

``--method rvi`` runs plain relative value iteration from V = 0 instead (same operator, same
stopping rule), as a cross-check on small or lightly loaded fleets (2 s at load 0.5, 7 s at 0.7);
it finds the same policy and mean.

The "central queue" reference is the same machinery's exact evaluation (no min) of the FIFO central
queue that always starts the head job on the fastest idle server and never leaves a server idle
while a job waits.

Truncation. The queue is cut at Qmax waiting jobs; an arrival finding Qmax waiting is lost. By
default Qmax = ceil(ln(1e-9) / ln(load)) + 2 * servers + 10 (about 430 at load 0.95), grown by 30%
until the optimal policy's stationary probability of a full queue is below 1e-9. Beyond the last
threshold the chain is a birth-death queue of ratio `load`, so the mean then moves by far less than
1e-4 relative. (Near Qmax the truncated problem's optimum may keep a server idle to block
arrivals; those states carry ~1e-9 of the mass and are left out of the threshold report.)

Thresholds. For each class, the smallest queue length q (counting the job to be started) at
which an idle server of that class is given a job, read off the states that carry stationary mass
(> 1e-12, queue at most Qmax / 2) where every faster class is busy; where it depends on the other
classes' busy counts the report gives the range "lowest-highest". It says whether a pure threshold
rule (fastest eligible class first, class c eligible when q >= T_c) reproduces the optimal decision
in every such state; if not, it gives the best such rule with thresholds in those ranges and its
exact mean.

Run (standard library only):

    python bench/mdp_optimum.py --speeds 1,1,1,1,2,2,4,8 --loads 0.5,0.7,0.9,0.95 [--json]
    python bench/mdp_optimum.py --check      # M/M/1, M/M/c and two-server brute-force validation
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

TOP_MASS = 1e-9  # largest stationary probability of a full queue the default Qmax accepts
SPAN_RTOL = 1e-7  # relative agreement of the span bounds that stops the iteration
RELEVANT = 1e-12  # stationary mass above which a state counts for the threshold report
_TIE = 1e-9  # relative margin by which a new action must beat the current one
_G = -1  # column id of the average cost g in the evaluation system


@dataclass(frozen=True)
class Optimum:
    """The reference optimum of one (speeds, load) case; times are in speed-1 mean service times."""

    speeds: tuple[float, ...]  # one per class, fastest first
    servers: tuple[int, ...]  # servers per class, in the same order
    load: float
    arrival_rate: float
    mean_sojourn: float  # optimal policy, exact evaluation of the policy found
    central_mean_sojourn: float  # central FIFO queue, head job to the fastest idle server
    thresholds: tuple[tuple[float, int], ...]  # (speed, smallest q that starts it) per class, fastest first
    pure_threshold: bool  # the threshold rule reproduces the optimal decision wherever it matters
    threshold_ranges: tuple[tuple[float, int, int], ...]  # (speed, lowest, highest) threshold seen per class
    rule_thresholds: tuple[tuple[float, int], ...]  # the best pure threshold rule within the ranges
    threshold_mean_sojourn: float  # exact mean of that rule (= mean_sojourn when pure_threshold)
    bounds: tuple[float, float]  # span bounds on the optimal mean sojourn (certificate)
    qmax: int
    top_mass: float  # stationary probability that the queue is full (Qmax waiting)
    method: str
    iterations: int  # policy-iteration steps (policy evaluations), or 0 for rvi
    sweeps: int  # Bellman sweeps of the whole state space
    seconds: float

    @property
    def ratio(self) -> float:
        """Optimal over central-queue mean sojourn."""
        return self.mean_sojourn / self.central_mean_sojourn


class _Model:
    """The truncated, uniformised MDP: states are flat indices q * nconf + k over busy configurations k."""

    def __init__(self, speeds: Sequence[float], load: float, qmax: int) -> None:
        classes: dict[float, int] = {}
        for s in speeds:
            classes[float(s)] = classes.get(float(s), 0) + 1
        self.speeds = tuple(sorted(classes, reverse=True))
        self.sizes = tuple(classes[s] for s in self.speeds)
        self.total = sum(s * n for s, n in zip(self.speeds, self.sizes))
        self.lam = load * self.total
        self.rate = 1.02 * (self.lam + self.total)  # > max outflow: every state has a self-loop (aperiodic)
        self.qmax = qmax
        self.stride: list[int] = []
        nconf = 1
        for n in self.sizes:
            self.stride.append(nconf)
            nconf *= n + 1
        self.nconf = nconf
        self.busy: list[tuple[int, ...]] = []
        for k in range(nconf):
            self.busy.append(tuple((k // st) % (n + 1) for st, n in zip(self.stride, self.sizes)))
        self.nbusy = [sum(b) for b in self.busy]
        self.drate = [sum(bc * s for bc, s in zip(b, self.speeds)) for b in self.busy]
        # completions: (rate, configuration after), assignments: (class, configuration after), fastest first
        self.minus = [
            [(bc * s, k - st) for bc, s, st in zip(b, self.speeds, self.stride) if bc > 0]
            for k, b in enumerate(self.busy)
        ]
        self.plus = [
            [(c, k + self.stride[c]) for c, (bc, n) in enumerate(zip(b, self.sizes)) if bc < n]
            for k, b in enumerate(self.busy)
        ]
        self.nstates = (qmax + 1) * nconf

    def rule(self, thresholds: Sequence[float]) -> list[int]:
        """Actions of the threshold rule: fastest class with an idle server and q >= its threshold, else stop (-1)."""
        act = [-1] * self.nstates
        for i in range(self.nconf, self.nstates):
            q, k = divmod(i, self.nconf)
            for c, _ in self.plus[k]:
                if q >= thresholds[c]:
                    act[i] = c
                    break
        return act

    def tau(self, act: Sequence[int]) -> list[int]:
        """Tangible (post-decision) state each pre-decision state is taken to by the policy."""
        tau = list(range(self.nstates))
        for i in range(self.nconf, self.nstates):
            a = act[i]
            if a >= 0:
                tau[i] = tau[i - self.nconf + self.stride[a]]
        return tau

    def transitions(self, act: Sequence[int], tau: Sequence[int]) -> dict[int, dict[int, float]]:
        """Rates between the policy's tangible states (decisions collapsed, truncated arrivals lost)."""
        out: dict[int, dict[int, float]] = {}
        K = self.nconf
        for i, a in enumerate(act):
            if a >= 0:
                continue
            q, k = divmod(i, K)
            row: dict[int, float] = {}
            if q < self.qmax:
                j = tau[i + K]
                row[j] = row.get(j, 0.0) + self.lam
            for r, km in self.minus[k]:
                j = tau[q * K + km]
                row[j] = row.get(j, 0.0) + r
            row.pop(i, None)
            out[i] = row
        return out

    def bellman(self, V: Sequence[float], keep: Sequence[int] | None) -> tuple[list[float], list[int], float, float]:
        """One Jacobi sweep of T; returns (TV, greedy actions, min(TV - V), max(TV - V)).

        With `keep`, a state keeps its action unless another beats it by a relative margin.
        """
        K, Q, lam, rate = self.nconf, self.qmax, self.lam, self.rate
        TV = [0.0] * self.nstates
        act = [-1] * self.nstates
        stay = [rate - lam - d for d in self.drate]
        lo, hi = math.inf, -math.inf
        for q in range(Q + 1):
            base = q * K
            lower = base - K
            for k in range(K):
                i = base + k
                v = V[i]
                s = q + self.nbusy[k] + stay[k] * v + lam * (V[i + K] if q < Q else v)
                for r, km in self.minus[k]:
                    s += r * V[base + km]
                best = stop = s / rate
                a = -1
                if q:
                    for c, kp in self.plus[k]:
                        w = TV[lower + kp]
                        if w < best:
                            best, a = w, c
                    if keep is not None and keep[i] != a:
                        old = keep[i]
                        w = stop if old < 0 else TV[lower + k + self.stride[old]]
                        if w <= best + _TIE * (1.0 + abs(best)):
                            a = old
                TV[i] = best
                act[i] = a
                d = best - v
                if d < lo:
                    lo = d
                if d > hi:
                    hi = d
        return TV, act, lo, hi

    def evaluate(self, act: Sequence[int]) -> tuple[float, list[float], list[int]]:
        """Exact average cost g and relative values h (h(0, empty) = 0) of a policy, on every pre-decision state."""
        tau = self.tau(act)
        trans = self.transitions(act, tau)
        rows: dict[int, dict[int, float]] = {}
        rhs: dict[int, float] = {}
        for i, out in trans.items():
            row = {j: r for j, r in out.items() if j != 0}
            if i != 0:
                row[i] = -sum(out.values())
            row[_G] = -1.0
            rows[i] = row
            q, k = divmod(i, self.nconf)
            rhs[i] = -float(q + self.nbusy[k])
        pivots = [(i, i) for i in sorted(trans, reverse=True) if i != 0]
        pivots.append((0, _G))
        x = _solve_sparse(rows, rhs, pivots)
        x[0] = 0.0
        return x[_G], [x[tau[i]] for i in range(self.nstates)], tau

    def stationary(self, act: Sequence[int], tau: Sequence[int]) -> dict[int, float]:
        """Stationary distribution of a policy over its tangible states (balance equations, pi(0, empty) fixed)."""
        trans = self.transitions(act, tau)
        rows: dict[int, dict[int, float]] = {i: {i: -sum(out.values())} for i, out in trans.items() if i != 0}
        rhs = dict.fromkeys(rows, 0.0)
        for x, out in trans.items():
            for y, r in out.items():
                if y == 0:
                    continue
                if x == 0:
                    rhs[y] -= r
                else:
                    rows[y][x] = rows[y].get(x, 0.0) + r
        pi = _solve_sparse(rows, rhs, [(i, i) for i in sorted(rows, reverse=True)])
        pi[0] = 1.0
        total = sum(pi.values())
        return {i: p / total for i, p in pi.items()}


def _solve_sparse(
    rows: dict[int, dict[int, float]], rhs: dict[int, float], pivots: Sequence[tuple[int, int]]
) -> dict[int, float]:
    """Gaussian elimination without pivoting (the systems are diagonally dominant) on a dict-of-rows matrix.

    `pivots` lists (row, column) pairs in elimination order; every column must be one of them.
    Modifies `rows` and `rhs`.
    """
    cols: dict[int, set[int]] = {}
    for r, row in rows.items():
        for j in row:
            cols.setdefault(j, set()).add(r)
    for r, c in pivots:
        prow = rows[r]
        for j in prow:
            cols[j].discard(r)
        piv = prow[c]
        b = rhs[r]
        for t in cols.pop(c, ()):
            row = rows[t]
            f = row.pop(c) / piv
            for j, v in prow.items():
                if j != c:
                    if j in row:
                        row[j] -= f * v
                    else:
                        row[j] = -f * v
                        cols[j].add(t)
            rhs[t] -= f * b
    x: dict[int, float] = {}
    for r, c in reversed(pivots):
        prow = rows[r]
        x[c] = (rhs[r] - sum(v * x[j] for j, v in prow.items() if j != c)) / prow[c]
    return x


def _central(model: _Model) -> list[int]:
    """The central FIFO queue: while a job waits, start it on the fastest idle server."""
    return model.rule([1] * len(model.speeds))


def _rvi(model: _Model, V: list[float], keep: list[int] | None, max_sweeps: int) -> tuple[list[int], float, float, int]:
    """Relative value iteration from V until the span bounds agree; returns (policy, g_lo, g_hi, sweeps)."""
    for n in range(1, max_sweeps + 1):
        TV, act, lo, hi = model.bellman(V, keep)
        glo, ghi = lo * model.rate, hi * model.rate
        if ghi - glo <= SPAN_RTOL * abs(ghi + glo) / 2:
            return act, glo, ghi, n
        ref = TV[0]
        V = [v - ref for v in TV]
        keep = None
    raise RuntimeError(f"relative value iteration did not converge in {max_sweeps} sweeps (span {glo}..{ghi})")


def _shape(
    model: _Model, act: Sequence[int], tau: Sequence[int], pi: dict[int, float]
) -> tuple[list[int], list[tuple[int, int]], set[int]]:
    """Thresholds, (lowest, highest) threshold per class, and the pre-decision states that matter."""
    K = model.nconf
    top = model.qmax // 2  # clear of the truncation's blocking artefacts (a few levels below Qmax)
    pre: set[int] = set()
    for i, p in pi.items():
        q, k = divmod(i, K)
        if p <= RELEVANT or q > top:
            continue
        pre.add(i)
        pre.add(i + K)
        pre.update(q * K + km for _, km in model.minus[k])
    given: list[set[int]] = [set() for _ in model.sizes]
    idle: list[set[int]] = [set() for _ in model.sizes]
    for i in pre:
        q, k = divmod(i, K)
        if q == 0:
            continue
        b, after = model.busy[k], model.busy[tau[i] % K]
        for c, n in enumerate(model.sizes):
            if b[c] < n:
                (given if after[c] > b[c] else idle)[c].add(q)
                break  # only the fastest class with an idle server: the others compete with it for the job
    thresholds, ranges = [], []
    for c in range(len(model.sizes)):
        low = min(given[c]) if given[c] else max(idle[c], default=0) + 1
        high = max(idle[c], default=0) + 1 if idle[c] else low
        thresholds.append(low)
        ranges.append((low, max(low, high)))
    return thresholds, ranges, pre


def _solve(speeds: Sequence[float], load: float, qmax: int, method: str) -> Optimum:
    t0 = time.perf_counter()
    model = _Model(speeds, load, qmax)
    central = _central(model)
    g_central, h, _ = model.evaluate(central)
    iterations = sweeps = 0
    if method == "pi":
        act = central
        g = g_central
        while True:
            iterations += 1
            _, new, lo, hi = model.bellman(h, act)
            sweeps += 1
            glo, ghi = lo * model.rate, hi * model.rate
            if new == act or ghi - glo <= SPAN_RTOL * abs(ghi + glo) / 2 or iterations >= 100:
                break
            act = new
            g, h, _ = model.evaluate(act)
        if ghi - glo > SPAN_RTOL * abs(ghi + glo) / 2:
            act, glo, ghi, n = _rvi(model, h, act, 100_000)
            sweeps += n
            g, h, _ = model.evaluate(act)
    elif method == "rvi":
        act, glo, ghi, sweeps = _rvi(model, [0.0] * model.nstates, None, 1_000_000)
        g, h, _ = model.evaluate(act)
    else:
        raise ValueError(f"unknown method {method!r}")
    tau = model.tau(act)
    pi = model.stationary(act, tau)
    top_mass = sum(p for i, p in pi.items() if i // model.nconf == qmax)
    thresholds, ranges, pre = _shape(model, act, tau, pi)
    rule_tau = model.tau(model.rule(thresholds))
    pure = all(lo_ == hi_ for lo_, hi_ in ranges) and all(tau[i] == rule_tau[i] for i in pre)
    best_rule, g_rule = tuple(thresholds), g
    if not pure:  # the best pure threshold rule with each class's threshold in its observed range
        g_rule = math.inf
        for candidate in itertools.product(*(range(lo_, hi_ + 1) for lo_, hi_ in ranges)):
            g_candidate = model.evaluate(model.rule(candidate))[0]
            if g_candidate < g_rule:
                best_rule, g_rule = candidate, g_candidate
    lam = model.lam
    return Optimum(
        speeds=model.speeds,
        servers=model.sizes,
        load=load,
        arrival_rate=lam,
        mean_sojourn=g / lam,
        central_mean_sojourn=g_central / lam,
        thresholds=tuple(zip(model.speeds, thresholds)),
        pure_threshold=pure,
        threshold_ranges=tuple((s, lo_, hi_) for s, (lo_, hi_) in zip(model.speeds, ranges)),
        rule_thresholds=tuple(zip(model.speeds, best_rule)),
        threshold_mean_sojourn=g_rule / lam,
        bounds=(glo / lam, ghi / lam),
        qmax=qmax,
        top_mass=top_mass,
        method=method,
        iterations=iterations,
        sweeps=sweeps,
        seconds=time.perf_counter() - t0,
    )


def default_qmax(speeds: Sequence[float], load: float) -> int:
    """Initial truncation level: a birth-death tail of ratio `load` down to 1e-9, plus a margin of levels."""
    return math.ceil(math.log(TOP_MASS) / math.log(load)) + 2 * len(speeds) + 10


def optimum(speeds: Sequence[float], load: float, *, qmax: int | None = None, method: str = "pi") -> Optimum:
    """The optimal (minimum mean sojourn) routing control and the central-queue reference for one case.

    `speeds` are the servers' service rates (a job on server i takes Exp(mean 1 / s_i)); jobs arrive at
    rate load * sum(speeds). With `qmax` None the queue truncation grows until the stationary
    probability of a full queue is below 1e-9; a given `qmax` is used as is. `method` is "pi" (policy
    iteration certified by span bounds, the default) or "rvi" (relative value iteration from zero).
    """
    if not speeds or min(speeds) <= 0:
        raise ValueError("speeds must be positive")
    if not 0 < load < 1:
        raise ValueError("load must be in (0, 1)")
    if qmax is not None:
        if qmax < 1:
            raise ValueError("qmax must be at least 1")
        return _solve(speeds, load, qmax, method)
    q = default_qmax(speeds, load)
    t0 = time.perf_counter()
    while True:
        result = _solve(speeds, load, q, method)
        if result.top_mass < TOP_MASS:
            return Optimum(**{**asdict(result), "seconds": time.perf_counter() - t0})
        q = math.ceil(q * 1.3)


def _fmt_thresholds(thresholds: Sequence[tuple[float, int]]) -> str:
    return " ".join(f"{s:g}:{t}" for s, t in thresholds)


def _fmt_ranges(ranges: Sequence[tuple[float, int, int]]) -> str:
    return " ".join(f"{s:g}:{lo}" if lo == hi else f"{s:g}:{lo}-{hi}" for s, lo, hi in ranges)


def _table(results: Sequence[Optimum]) -> str:
    lines = [
        "| load | optimal mean | central mean | ratio | thresholds (speed:q) | pure rule | Qmax | PI steps | seconds |",
        "|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in results:
        pure = "yes"
        if not r.pure_threshold:
            loss = r.threshold_mean_sojourn / r.mean_sojourn
            pure = f"no: best rule {_fmt_thresholds(r.rule_thresholds)} is {loss:.6f}x"
        lines.append(
            f"| {r.load:g} | {r.mean_sojourn:.6f} | {r.central_mean_sojourn:.6f} | {r.ratio:.4f} "
            f"| {_fmt_ranges(r.threshold_ranges)} | {pure} | {r.qmax} | {r.iterations} | {r.seconds:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Validation (--check): closed forms, and a brute force over two-server threshold rules whose
# Markov chains are built and solved here independently of the machinery above.


def _erlang_c_sojourn(servers: int, speed: float, lam: float) -> float:
    """Mean sojourn of M/M/c (FIFO, c identical servers of rate `speed`)."""
    a = lam / speed
    rho = a / servers
    tail = a**servers / math.factorial(servers) / (1 - rho)
    wait_prob = tail / (sum(a**n / math.factorial(n) for n in range(servers)) + tail)
    return 1 / speed + wait_prob / (servers * speed - lam)


def _dense_stationary(generator: list[list[float]]) -> list[float]:
    """Solve pi Q = 0, sum(pi) = 1 by dense Gaussian elimination with partial pivoting."""
    n = len(generator)
    a = [[generator[j][i] for j in range(n)] + [0.0] for i in range(n)]  # transpose, augmented
    a[-1] = [1.0] * n + [1.0]
    for col in range(n):
        p = max(range(col, n), key=lambda r: abs(a[r][col]))
        a[col], a[p] = a[p], a[col]
        pr = a[col]
        for r in range(col + 1, n):
            f = a[r][col] / pr[col]
            if f:
                row = a[r]
                for j in range(col, n + 1):
                    row[j] -= f * pr[j]
    pi = [0.0] * n
    for r in range(n - 1, -1, -1):
        pi[r] = (a[r][n] - sum(a[r][j] * pi[j] for j in range(r + 1, n))) / a[r][r]
    return pi


def _two_server_rule(fast: float, slow: float, load: float, t_fast: int, t_slow: int, qmax: int) -> float:
    """Mean sojourn of a two-server threshold rule, from its balance equations (independent of _Model)."""
    lam = load * (fast + slow)

    def settle(q: int, bf: int, bs: int) -> tuple[int, int, int]:
        if not bf and q >= t_fast:
            q, bf = q - 1, 1
        if not bs and q >= t_slow:
            q, bs = q - 1, 1
        if not bf and q >= t_fast:
            q, bf = q - 1, 1
        return q, bf, bs

    index: dict[tuple[int, int, int], int] = {}
    edges: list[tuple[tuple[int, int, int], tuple[int, int, int], float]] = []
    todo = [(0, 0, 0)]
    while todo:
        s = todo.pop()
        if s in index:
            continue
        index[s] = len(index)
        q, bf, bs = s
        moves = []
        if q < qmax:
            moves.append((settle(q + 1, bf, bs), lam))
        if bf:
            moves.append((settle(q, 0, bs), fast))
        if bs:
            moves.append((settle(q, bf, 0), slow))
        for t, r in moves:
            edges.append((s, t, r))
            todo.append(t)
    n = len(index)
    gen = [[0.0] * n for _ in range(n)]
    for s, t, r in edges:
        i, j = index[s], index[t]
        if i != j:
            gen[i][j] += r
            gen[i][i] -= r
    pi = _dense_stationary(gen)
    return sum(pi[i] * (q + bf + bs) for (q, bf, bs), i in index.items()) / lam


def _check() -> bool:
    """Print the validation figures; return whether all agree."""
    ok = True

    def report(name: str, got: float, want: float, rtol: float) -> None:
        nonlocal ok
        err = abs(got - want) / abs(want)
        good = err <= rtol
        ok &= good
        print(f"{'ok  ' if good else 'FAIL'} {name}: {got:.10f} vs {want:.10f} (rel. err. {err:.1e})")

    for speed, load in ((1.0, 0.5), (1.0, 0.9), (2.0, 0.95)):
        r = optimum([speed], load)
        want = 1 / (speed * (1 - load))
        report(f"M/M/1 speed {speed:g} load {load:g}, optimal", r.mean_sojourn, want, 1e-6)
        report(f"M/M/1 speed {speed:g} load {load:g}, central", r.central_mean_sojourn, want, 1e-6)
    for load in (0.5, 0.9):
        r = optimum([1, 1, 1, 1], load)
        want = _erlang_c_sojourn(4, 1.0, load * 4)
        report(f"M/M/4 load {load:g}, optimal", r.mean_sojourn, want, 1e-6)
        report(f"M/M/4 load {load:g}, central", r.central_mean_sojourn, want, 1e-6)
    qmax = 80
    for fast, load in ((2.0, 0.3), (4.0, 0.3), (8.0, 0.3), (8.0, 0.6), (16.0, 0.5)):
        r = optimum([1, fast], load, qmax=qmax)
        grid = {(tf, ts): _two_server_rule(fast, 1.0, load, tf, ts, qmax) for tf in (1, 2) for ts in range(1, 16)}
        best = min(grid, key=lambda t: grid[t])
        name = f"speeds 1,{fast:g} load {load:g}"
        report(f"{name}, MDP optimum vs best of {len(grid)} threshold rules", r.mean_sojourn, grid[best], 1e-9)
        report(f"{name}, central vs rule (1, 1)", r.central_mean_sojourn, grid[1, 1], 1e-9)
        found = (r.thresholds[0][1], r.thresholds[1][1])
        same = found == best
        ok &= same
        print(f"{'ok  ' if same else 'FAIL'} {name}: MDP thresholds (fast, slow) {found}, brute force {best}")
    for speeds, load in (((1, 2, 4), 0.6), ((1, 1, 2, 8), 0.5)):
        pi_, rvi = optimum(speeds, load), optimum(speeds, load, method="rvi")
        name = f"speeds {','.join(map(str, speeds))} load {load:g}"
        report(
            f"{name}, policy iteration vs relative value iteration ({rvi.sweeps} sweeps, {rvi.seconds:.1f} s)",
            pi_.mean_sojourn,
            rvi.mean_sojourn,
            1e-7,
        )
    return ok


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the optimum against the central queue per load, as markdown or JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--speeds", default="1,1,1,1,2,2,4,8", help="comma-separated server speeds")
    parser.add_argument("--loads", default="0.5,0.7,0.9,0.95", help="comma-separated loads in (0, 1)")
    parser.add_argument("--qmax", type=int, default=None, help="queue truncation (default: grown until 1e-9 mass)")
    parser.add_argument("--method", choices=("pi", "rvi"), default="pi", help="policy iteration (default) or plain RVI")
    parser.add_argument("--json", action="store_true", help="one JSON object per load instead of a table")
    parser.add_argument("--check", action="store_true", help="run the validation cases and exit")
    args = parser.parse_args(argv)
    if args.check:
        return 0 if _check() else 1
    speeds = [float(s) for s in args.speeds.split(",")]
    results = []
    for load in (float(x) for x in args.loads.split(",")):
        r = optimum(speeds, load, qmax=args.qmax, method=args.method)
        results.append(r)
        if args.json:
            print(json.dumps({**asdict(r), "ratio": r.ratio}), flush=True)
    if not args.json:
        print(_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
