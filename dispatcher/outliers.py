"""Outlier detection: a node whose recent jobs fail far more than they should is ejected for a
cool-down, as Envoy and Istio eject hosts on consecutive errors. Pure: fed node snapshots."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from .models import NodeState


@dataclass
class FailureRateOutliers:
    """Ejects a node when, over the last `window_s`, at least `min_jobs` of its jobs ended and
    `max_failure_rate` or more of them failed. Counts come from heartbeats (cumulative), so
    each observation adds the difference since the previous one."""

    max_failure_rate: float = 0.5
    min_jobs: int = 10
    window_s: float = 60.0
    _last: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (completed, failed)
    _recent: dict[str, deque[tuple[float, int, int]]] = field(default_factory=dict)

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
            recent = self._recent.setdefault(n.node_id, deque())
            if ok or bad:
                recent.append((now_s, ok, bad))
            while recent and recent[0][0] < now_s - self.window_s:
                recent.popleft()
            total_ok, total_bad = sum(r[1] for r in recent), sum(r[2] for r in recent)
            jobs = total_ok + total_bad
            if jobs >= self.min_jobs and total_bad / jobs >= self.max_failure_rate:
                eject.append((n.node_id, total_bad / jobs, jobs))
                recent.clear()
        return eject
