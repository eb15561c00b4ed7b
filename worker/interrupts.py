"""Why a slot's rq loop ends early: both are rq StopRequested, which rq's loop takes as a quiet
stop (no traceback), and run.work_slot tells them apart."""

from __future__ import annotations

from rq.exceptions import StopRequested


class RedisLost(StopRequested):
    """Raised inside rq's loop when Redis failed under it (down, restarting, failing over):
    run.work_slot starts over once Redis answers, giving back what this process held. Never
    counts as the job failing."""


class TakenOver(StopRequested):
    """Raised when another process has taken this node over (its liveness key holds another
    incarnation): this process takes and starts nothing more, and exits."""
