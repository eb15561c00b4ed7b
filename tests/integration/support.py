"""Helpers for the process-level tests: polling with a deadline, the CLI as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# Fast liveness, retries and failover, so the tests wait seconds, not minutes.
FAST_ENV = {
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


def gpufleet(url: str, namespace: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "cli", "--redis-url", url, "--namespace", namespace, *args],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **FAST_ENV})  # fmt: skip
