"""Helpers for the process-level tests: polling with a deadline, the CLI as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeVar

import redis

from gpufleet.worker.fleet import GPUFLEET, LocalFleet

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[2]
# Fast liveness, retries and failover, so the tests wait seconds, not minutes; the checkout on
# the path, for the test tasks (tests.integration.tasks) that workers are allowed to run.
FAST_ENV = {
    "PYTHONPATH": str(ROOT),
    "GPUFLEET_HEARTBEAT_INTERVAL_S": "0.2",
    "GPUFLEET_HEARTBEAT_TTL_S": "1.0",
    "GPUFLEET_RETRY_BASE_S": "0.05",
    "GPUFLEET_RETRY_CAP_S": "0.2",
    "GPUFLEET_LEASE_TTL_S": "1.0",
}


def wait_until(predicate: Callable[[], T], timeout_s: float, what: str, poll_s: float = 0.05) -> T:
    """Poll until `predicate` is truthy; AssertionError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(poll_s)
    return value


def gpufleet(url: str, namespace: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would (`input`: its stdin)."""
    return subprocess.run([*GPUFLEET, "--redis-url", url, "--namespace", namespace, *args], input=input,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **FAST_ENV})  # fmt: skip


def process_tree(pid: int) -> list[int]:
    """`pid` and every process below it (children first found through /proc)."""
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal a worker and its slot processes at once (they run in process groups of their
    own), as a host crash or an OOM kill of the whole service would."""
    for p in process_tree(pid):
        with suppress(ProcessLookupError):
            os.kill(p, sig)


def tracebacks(log_dir: str) -> dict[str, int]:
    """Per process log file under `log_dir` (LocalFleet.log_dir), how many tracebacks it holds."""
    counts = {f.name: f.read_text(errors="replace").count("Traceback") for f in Path(log_dir).glob("*.log")}
    return {name: n for name, n in counts.items() if n}


@contextmanager
def local_fleet(redis_url: str, namespace: str, log_dir: str | None = None) -> Iterator[LocalFleet]:
    """A LocalFleet with fast liveness on an emptied Redis; every process stopped on the way out."""
    redis.Redis.from_url(redis_url).flushdb()
    fleet = LocalFleet(redis_url, namespace=namespace, env=FAST_ENV, log_dir=log_dir)
    try:
        yield fleet
    finally:
        fleet.stop()
