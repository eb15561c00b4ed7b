"""A node's own counters, shared by the job loop (writer) and the heartbeat thread (reader)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

EWMA_ALPHA = 0.2  # weight of the newest job in the service-time average


@dataclass(frozen=True)
class StatsView:
    """A consistent copy of the counters."""

    running: int
    completed: int
    failed: int
    service_time_s: float
    busy_fraction: float


class NodeStats:
    """Jobs running/completed/failed, EWMA service time and busy fraction; thread-safe."""

    def __init__(self, *, initial_service_time_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._running = 0
        self._completed = 0
        self._failed = 0
        self._service_time_s = initial_service_time_s
        self._busy_s = 0.0  # busy time accumulated since the last view
        self._busy_since: float | None = None  # start of the job running now
        self._window_start = clock()
        self.last_busy_fraction = 0.0  # busy fraction of the most recent view

    def job_started(self) -> None:
        with self._lock:
            self._running += 1
            if self._busy_since is None:
                self._busy_since = self._clock()

    def job_ended(self, duration_s: float, ok: bool) -> None:
        with self._lock:
            self._running = max(0, self._running - 1)
            if ok:
                self._completed += 1
            else:
                self._failed += 1
            self._service_time_s += EWMA_ALPHA * (duration_s - self._service_time_s)
            if self._running == 0 and self._busy_since is not None:
                self._busy_s += self._clock() - self._busy_since
                self._busy_since = None

    def view(self) -> StatsView:
        """The counters now; busy fraction is measured since the previous view."""
        with self._lock:
            t = self._clock()
            busy = self._busy_s
            if self._busy_since is not None:
                busy += t - self._busy_since
                self._busy_since = t
            window = max(1e-9, t - self._window_start)
            self._busy_s, self._window_start = 0.0, t
            self.last_busy_fraction = min(1.0, busy / window)
            return StatsView(
                self._running, self._completed, self._failed, self._service_time_s, self.last_busy_fraction
            )
