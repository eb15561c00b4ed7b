"""When a failed job runs again: exponential backoff with jitter (pure)."""

from __future__ import annotations

import random


def retry_delay_s(attempt: int, *, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before the retry that follows execution number `attempt` (1, 2, ...): base * 2^(attempt-1),
    times a jitter in [0.5, 1.5) so a burst of failures does not come back in lockstep. The
    un-jittered delay stops at cap / 1.5: the jitter keeps its spread there too, and no delay
    exceeds `cap_s`."""
    nominal = min(cap_s / 1.5, base_s * 2.0 ** max(0, attempt - 1))
    return float(min(cap_s, nominal * (0.5 + rng.random())))  # min: 0.5 + random() can round up to 1.5


def may_retry(attempts: int, retries: int) -> bool:
    """A job that has started `attempts` executions may start another while attempts <= retries."""
    return attempts <= retries
