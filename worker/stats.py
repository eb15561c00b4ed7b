"""A node's own counters, shared by its job slots (writers, possibly several processes) and the
heartbeat thread (reader). Backed by shared memory, so a node of capacity N can run N worker
processes that report as one node."""

from __future__ import annotations

import logging
import multiprocessing
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from gpufleet.dispatcher.routing.models import SERVICE_TIME_EWMA_ALPHA

from .recycle import REASONS

log = logging.getLogger(__name__)

MODELS_BYTES = 4096  # room for the comma-joined names of the models the node's slots keep warm
_MP = multiprocessing.get_context("spawn")
_RUNNING, _COMPLETED, _FAILED, _SERVICE_S, _BUSY_S, _WINDOW_START, _BATCH_MAX = range(7)


@dataclass(frozen=True)
class StatsView:
    """A consistent copy of the counters."""

    running: int
    completed: int
    failed: int
    service_time_s: float
    busy_fraction: float  # share of slot-time spent on jobs since the previous view
    batch_max: int = 1  # the largest max_size of the batched tasks run here so far (1: none)


@dataclass(frozen=True)
class Totals:
    """Counters since the node started, for Prometheus; reading them resets nothing."""

    completed: int
    failed: int
    bucket_counts: tuple[int, ...]  # jobs per duration bucket (not cumulative); the last is +Inf
    duration_sum_s: float
    recycles: tuple[int, ...]  # slot processes replaced, per recycle.REASONS


class NodeStats:
    """Jobs running/completed/failed, EWMA service time and busy fraction; process-safe.

    `clock` must be shared by every process (time.monotonic is, on one host).
    """

    def __init__(self, slots: int = 1, *, initial_service_time_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic, buckets: Sequence[float] = ()) -> None:  # fmt: skip
        self.slots = slots
        self.buckets = tuple(buckets)  # upper bounds (s) of a job-duration histogram; () keeps none
        self._clock = clock
        self._lock = _MP.Lock()
        self._v = _MP.Array("d", 7, lock=False)
        self._v[_SERVICE_S] = initial_service_time_s
        self._v[_BATCH_MAX] = 1
        self._v[_WINDOW_START] = clock()
        self._started = _MP.Array("d", slots, lock=False)  # start time of each slot's job; -1 idle
        for i in range(slots):
            self._started[i] = -1.0
        self.last_busy_fraction = 0.0  # busy fraction of the most recent view (this process)
        self._hist = _MP.Array("d", len(self.buckets) + 2, lock=False)  # bucket counts, +Inf, sum
        self._models = _MP.Array("c", MODELS_BYTES, lock=False)  # comma-joined model names
        self._recycles = _MP.Array("d", len(REASONS), lock=False)  # slot processes replaced, per reason

    def job_started(self, slot: int = 0, count: int = 1) -> None:
        """`count` jobs started together in `slot` (more than one: a batch)."""
        with self._lock:
            self._v[_RUNNING] += count
            self._started[slot] = self._clock()

    def job_ended(self, duration_s: float, ok: bool, slot: int = 0, count: int = 1) -> None:
        """`count` jobs of `slot` ended with the same outcome after `duration_s` (a batch's jobs
        all take the batch's time: the service-time average is per job held, as routing reads it)."""
        if count < 1:
            return
        with self._lock:
            t = self._clock()
            self._v[_RUNNING] = max(0.0, self._v[_RUNNING] - count)
            self._v[_COMPLETED if ok else _FAILED] += count
            self._v[_SERVICE_S] += SERVICE_TIME_EWMA_ALPHA * (duration_s - self._v[_SERVICE_S])
            self._hist[bisect_left(self.buckets, duration_s)] += count  # le semantics: duration <= bound
            self._hist[-1] += duration_s * count
            self._slot_idle(slot, t)

    def jobs_stopped(self, slot: int = 0, count: int = 1) -> None:
        """`count` jobs of `slot` were stopped on request: no longer running, and neither
        completed nor failed (a stop says nothing of the node), nor a service time."""
        if count < 1:
            return
        with self._lock:
            self._v[_RUNNING] = max(0.0, self._v[_RUNNING] - count)
            self._slot_idle(slot, self._clock())

    def _slot_idle(self, slot: int, t: float) -> None:
        """The slot's job ended at `t`: its busy time counts (the lock held)."""
        if self._started[slot] >= 0:
            self._v[_BUSY_S] += t - max(self._started[slot], self._v[_WINDOW_START])
            self._started[slot] = -1.0

    def recycled(self, reason: str) -> None:
        """A slot process made way for a fresh one, for `reason` (one of recycle.REASONS)."""
        with self._lock:
            self._recycles[REASONS.index(reason)] += 1

    def service_time_s(self) -> float:
        """The EWMA service time now (reads nothing else and resets nothing, unlike `view`)."""
        return float(self._v[_SERVICE_S])

    def view(self) -> StatsView:
        """The counters now; the busy fraction covers the time since the previous view."""
        with self._lock:
            t = self._clock()
            start = self._v[_WINDOW_START]
            busy = self._v[_BUSY_S] + sum(t - max(s, start) for s in self._started if s >= 0)
            fraction = min(1.0, busy / max(1e-9, (t - start) * self.slots))
            self._v[_BUSY_S], self._v[_WINDOW_START] = 0.0, t
            view = StatsView(int(self._v[_RUNNING]), int(self._v[_COMPLETED]), int(self._v[_FAILED]),
                             self._v[_SERVICE_S], fraction, int(self._v[_BATCH_MAX]))  # fmt: skip
        self.last_busy_fraction = fraction
        return view

    def saw_batch_size(self, max_size: int) -> None:
        """A batched task that takes up to `max_size` jobs at once runs here."""
        with self._lock:
            self._v[_BATCH_MAX] = max(self._v[_BATCH_MAX], max_size)

    def add_models(self, names: Iterable[str]) -> None:
        """Models a slot has loaded and keeps warm; the heartbeat reports those of every slot."""
        with self._lock:
            known = self._read_models()
            merged = ",".join(sorted(known | set(names)))
            if len(merged.encode()) >= MODELS_BYTES:
                log.warning("too many model names to report, keeping the first ones known=%d", len(known))
                return
            self._models.value = merged.encode()

    def models(self) -> frozenset[str]:
        with self._lock:
            return self._read_models()

    def _read_models(self) -> frozenset[str]:
        return frozenset(m for m in self._models.value.decode().split(",") if m)

    def totals(self) -> Totals:
        """Completed, failed and the duration histogram, read together; unlike view(), no side effect."""
        with self._lock:
            counts = tuple(int(c) for c in self._hist[:-1])
            return Totals(int(self._v[_COMPLETED]), int(self._v[_FAILED]), counts, self._hist[-1],
                          tuple(int(c) for c in self._recycles))  # fmt: skip
