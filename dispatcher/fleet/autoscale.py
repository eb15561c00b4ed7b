"""The autoscaling signal: how many nodes the fleet should have, from backlog, arrival rate and
per-node throughput.

    desired = ceil((arrival_rate + backlog / target_drain_s) / per_node_throughput)

clamped to [min_nodes, max_nodes]: enough nodes to keep up with new jobs and also drain the
jobs already waiting within `target_drain_s`. A change up waits out `up_cooldown_s` since the
last change (short: a backlog should not wait), a change down waits out `down_cooldown_s`
(long: nodes are slow to come back), so the count never flaps inside a cool-down.

`decide` is pure (an injected `now`, plain numbers in and out), as dramatiq's rate limiters
and Ray Serve's router keep the algorithm apart from the I/O. The rest of the module is small
and separate: turning a snapshot into a `Demand`, measuring the arrival rate, and publishing
the count in Redis (`keys.desired_nodes`), where `gpufleet top`, `status` and the
`gpufleet_desired_nodes` metric read it.
"""

from __future__ import annotations

import logging
import math
import shlex
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from redis import Redis

from ..errors import SettingsError
from ..routing.models import NodeState
from ..store.keys import Keys
from .tenants import read_waiting_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleParams:
    """What the operator chose (`dispatcher --target-drain-s --min-nodes --max-nodes`)."""

    target_drain_s: float = 60.0  # drain the waiting jobs within this long
    min_nodes: int = 0
    max_nodes: int = 16
    up_cooldown_s: float = 15.0  # since the last change, before the count may go up again
    down_cooldown_s: float = 300.0  # since the last change, before the count may go down

    def __post_init__(self) -> None:
        if self.target_drain_s <= 0:
            raise SettingsError(f"target_drain_s must be > 0 (got {self.target_drain_s})")
        if not 0 <= self.min_nodes <= self.max_nodes:
            raise SettingsError(f"need 0 <= min_nodes <= max_nodes (got {self.min_nodes}, {self.max_nodes})")
        if self.up_cooldown_s < 0 or self.down_cooldown_s < 0:
            raise SettingsError("cool-downs must be >= 0")


@dataclass(frozen=True)
class Demand:
    """The load the fleet sees now."""

    backlog: int  # jobs waiting: the ingress queues plus the node queues
    arrival_rate: float  # jobs/s coming in
    node_throughput: float | None  # jobs/s one live node serves; None (or 0): unknown, no live node
    live_nodes: int


@dataclass(frozen=True)
class Decision:
    """The published count and when it last changed."""

    nodes: int
    changed_at: float


def needed_nodes(demand: Demand, params: ScaleParams) -> int:
    """Nodes to serve the arrival rate and drain the backlog in time, within the bounds.

    With no throughput figure (no live node) there is nothing to size by: work waiting or
    arriving asks for one node (scale from zero) or the live count, no work for the minimum."""
    work = demand.backlog + demand.arrival_rate
    if not demand.node_throughput or demand.node_throughput <= 0:
        want = max(demand.live_nodes, 1) if work > 0 else 0
    else:
        rate = max(0.0, demand.arrival_rate) + max(0, demand.backlog) / params.target_drain_s
        want = math.ceil(rate / demand.node_throughput - 1e-9)  # 3.0000000001 nodes is 3
    return min(params.max_nodes, max(params.min_nodes, want))


def decide(demand: Demand, params: ScaleParams, now: float, last: Decision | None) -> Decision:
    """The count to publish now. `last` is the previous decision (None: the first, taken at
    once). Up waits `up_cooldown_s` and down waits `down_cooldown_s` after the last change;
    until then the last count stands. A count outside new bounds moves into them at once."""
    want = needed_nodes(demand, params)
    if last is None:
        return Decision(want, now)
    if not params.min_nodes <= last.nodes <= params.max_nodes:  # the bounds changed
        return Decision(min(params.max_nodes, max(params.min_nodes, last.nodes)), now)
    since = now - last.changed_at
    if want > last.nodes and since >= params.up_cooldown_s:
        return Decision(want, now)
    if want < last.nodes and since >= params.down_cooldown_s:
        return Decision(want, now)
    return last


def demand_of(nodes: Sequence[NodeState], ingress: Mapping[str, int], arrival_rate: float) -> Demand:
    """A Demand from a snapshot: the backlog is every ingress plus every live node's queue;
    a node's throughput is capacity / EWMA service time, averaged over the live nodes. Live is
    `NodeState.alive`, the fleet's one definition (observe/status.py): every state but dead, so
    `live_nodes` is the count `status` and `top` show as live."""
    live = [n for n in nodes if n.alive]
    backlog = sum(ingress.values()) + sum(n.queued for n in live)
    served = sum(n.capacity / n.service_time_s for n in live if n.service_time_s > 0)
    return Demand(backlog, arrival_rate, served / len(live) if live else None, len(live))


class ArrivalMeter:
    """Jobs/s coming in, from successive (time, unfinished, ended) samples, where `unfinished`
    is every job waiting or running and `ended` the nodes' completed + failed counts: what
    arrived is what `unfinished` grew by plus what ended meanwhile. Smoothed (EWMA over about
    `window_s`). A drop in `ended` (a worker restarted its counters) counts as nothing ended."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.rate = 0.0
        self._last: tuple[float, int, int] | None = None

    def observe(self, now: float, unfinished: int, ended: int) -> float:
        if self._last is not None and now > self._last[0]:
            then, last_unfinished, last_ended = self._last
            arrived = max(0, unfinished - last_unfinished + max(0, ended - last_ended))
            weight = min(1.0, (now - then) / self.window_s)
            self.rate += weight * (arrived / (now - then) - self.rate)
        self._last = (now, unfinished, ended)
        return self.rate


def scale_argv(template: str, n: int) -> list[str]:
    """`--scale-cmd 'kubectl scale deploy/gpu-worker --replicas={n}'` as argv for n, no shell."""
    return [part.replace("{n}", str(n)) for part in shlex.split(template)]


def publish_desired(r: Redis, keys: Keys, n: int) -> None:
    r.set(keys.desired_nodes, n)


def clear_desired(r: Redis, keys: Keys) -> None:
    """No autoscaler: leave no count from an earlier run for `top` and scalers to trust."""
    r.delete(keys.desired_nodes)


def read_desired(r: Redis, keys: Keys) -> int | None:
    """The published count; None when no autoscaler has published one."""
    raw = r.get(keys.desired_nodes)
    try:
        return None if raw is None else int(raw)
    except ValueError:
        return None


class ScaleCommand:
    """`--scale-cmd 'CMD {n}'`: run CMD with the new count, without a shell and without
    waiting for it (the dispatcher keeps routing); a command that cannot start is logged."""

    def __init__(self, template: str) -> None:
        scale_argv(template, 0)  # a template shlex cannot split fails at start, not at the first change
        self.template = template
        self._proc: subprocess.Popen[bytes] | None = None

    def __call__(self, n: int) -> None:
        if self._proc is not None and self._proc.poll() is None:
            log.warning("previous scale command still running; starting the next anyway pid=%d", self._proc.pid)
        try:
            self._proc = subprocess.Popen(scale_argv(self.template, n), stdin=subprocess.DEVNULL)
        except OSError as e:
            log.error("scale command failed to start n=%d error=%s", n, e)


class Autoscaler:
    """The I/O around `decide`, for the dispatcher's loop: at most once per `interval_s`, read
    the ingress depths (one round trip), decide from the snapshot, publish the count in Redis,
    and call `on_change(n)` when it changed. A dispatcher taking over from another starts its
    cool-down from the count that one published."""

    def __init__(self, r: Redis, keys: Keys, params: ScaleParams, *, interval_s: float = 1.0,
                 on_change: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._r, self._keys, self.params = r, keys, params
        self._interval_s, self._on_change, self._clock = interval_s, on_change, clock
        self._meter = ArrivalMeter()
        self._due = float("-inf")
        self.decision: Decision | None = None

    def step(self, nodes: Sequence[NodeState]) -> int | None:
        """The desired count after this snapshot; None when not due yet."""
        now = self._clock()
        if now < self._due:
            return None
        self._due = now + self._interval_s
        if self.decision is None and (published := read_desired(self._r, self._keys)) is not None:
            self.decision = Decision(published, now)
        ingress = {priority: w.total for priority, w in read_waiting_counts(self._r, self._keys).items()}
        live = [n for n in nodes if n.alive]
        unfinished = sum(ingress.values()) + sum(n.queued + n.running for n in live)
        arrival = self._meter.observe(now, unfinished, sum(n.completed + n.failed for n in nodes))
        demand, before = demand_of(nodes, ingress, arrival), self.decision
        self.decision = decide(demand, self.params, now, before)
        n = self.decision.nodes
        publish_desired(self._r, self._keys, n)
        if before is None or n != before.nodes:
            log.info("desired nodes %s -> %d live=%d backlog=%d arrival_per_s=%.2f",
                     "-" if before is None else before.nodes, n, demand.live_nodes, demand.backlog,
                     arrival)  # fmt: skip
            if self._on_change is not None:
                self._on_change(n)
        return n
