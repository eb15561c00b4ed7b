"""Outlier detection: a node whose recent jobs fail far more than they should is ejected for a
cool-down, as Envoy and Istio eject hosts on consecutive errors. Pure: fed node snapshots."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..routing.models import NodeState


@dataclass
class _Window:
    """One node's job endings over a sliding time window, with running totals, so that an
    observation costs the entries it adds and drops, not the window's length."""

    entries: deque[tuple[float, int, int]] = field(default_factory=deque)  # (at, ok, bad)
    ok: int = 0
    bad: int = 0

    def add(self, at_s: float, ok: int, bad: int) -> None:
        self.entries.append((at_s, ok, bad))
        self.ok += ok
        self.bad += bad

    def drop_before(self, at_s: float) -> None:
        while self.entries and self.entries[0][0] < at_s:
            _, ok, bad = self.entries.popleft()
            self.ok -= ok
            self.bad -= bad

    def clear(self) -> None:
        self.entries.clear()
        self.ok = self.bad = 0


@dataclass
class FailureRateOutliers:
    """Ejects a node when, over the last `window_s`, at least `min_jobs` of its jobs ended and
    `max_failure_rate` or more of them failed. Counts come from heartbeats (cumulative), so
    each observation adds the difference since the previous one."""

    max_failure_rate: float = 0.5
    min_jobs: int = 10
    window_s: float = 60.0
    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (completed, failed)
    _recent: dict[str, _Window] = field(default_factory=dict)

    def observe(self, nodes: Sequence[NodeState], now_s: float) -> list[tuple[str, float, int]]:
        """(node id, failure rate, jobs) for each node to eject now; its history restarts."""
        eject = []
        for n in nodes:
            before = self._last.get(n.node_id)
            self._last[n.node_id] = (n.completed, n.failed)
            if before is None or n.ejected or not n.alive:
                continue
            ok, bad = n.completed - before[0], n.failed - before[1]
            if ok < 0 or bad < 0:  # the worker restarted: its counters began again
                continue
            recent = self._recent.get(n.node_id)
            if recent is None:
                recent = self._recent[n.node_id] = _Window()
            if ok or bad:
                recent.add(now_s, ok, bad)
            recent.drop_before(now_s - self.window_s)
            jobs = recent.ok + recent.bad
            if jobs >= self.min_jobs and recent.bad / jobs >= self.max_failure_rate:
                eject.append((n.node_id, recent.bad / jobs, jobs))
                recent.clear()
        return eject
