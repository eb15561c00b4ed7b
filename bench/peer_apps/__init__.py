"""The apps the peer benches run (bench/peers.py, bench/latency.py): one module per task queue,
each with one no-op `echo` task and a hook that counts the worker in once it is ready to take
jobs. The worker processes import these modules by name (bench/ is on their PYTHONPATH); the
Redis URL comes from BENCH_REDIS_URL, set by the bench before it starts them or imports one."""

from __future__ import annotations

import os

from redis import Redis

READY_KEY = "bench:ready"  # INCR'd once per worker process (per worker thread for huey, 1 here)


def redis_url() -> str:
    return os.environ["BENCH_REDIS_URL"]


def mark_ready() -> None:
    """Count this worker in: the bench waits for one per worker process before its clock starts."""
    with Redis.from_url(redis_url()) as r:
        r.incr(READY_KEY)
