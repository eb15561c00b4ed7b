"""The fleet's recent history in Redis: jobs ended and failed, and jobs waiting, per bucket of
time, in bounded memory, written by the active dispatcher, read by the web dashboard's charts.

keys.history is a HASH of at most HISTORY_BUCKETS fields: slot (bucket start // bucket length,
modulo HISTORY_BUCKETS) -> JSON {"t": bucket start (unix s), "s": bucket length (s), "ended":
jobs, "failed": jobs, "waiting": jobs waiting at its end}. A slot is overwritten when its bucket comes round again,
so the HASH never grows, and a reader drops buckets older than the window (a slot not
rewritten since). Ended and failed come from the nodes' heartbeat counters (completed, failed):
what they grew by since the last read, a node's restart (its counters start again) counting
from zero. Nothing is lost when the web process restarts: it keeps nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis import Redis

from ..fleet.tenants import read_waiting_counts
from ..routing.models import NodeState
from ..store.keys import Keys

HISTORY_BUCKETS = 1440  # buckets kept: with 10 s buckets, the last 4 hours


@dataclass
class History:
    """What the dispatcher counts between two writes of the history (pure but for `write`)."""

    bucket_s: float = 10.0
    ended: int = 0
    failed: int = 0
    _bucket: int | None = None  # the bucket being counted (its start // bucket_s)
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict)  # node -> (completed, failed) last read

    def observe(self, nodes: Sequence[NodeState]) -> None:
        """Count what each node's completed and failed counters grew by since the last read."""
        for n in nodes:
            completed, failed = self._seen.get(n.node_id, (n.completed, n.failed))
            grew_c = n.completed - completed if n.completed >= completed else n.completed  # restarted: from 0
            grew_f = n.failed - failed if n.failed >= failed else n.failed
            self.ended += grew_c + grew_f
            self.failed += grew_f
            self._seen[n.node_id] = (n.completed, n.failed)

    def due(self, now_s: float) -> int | None:
        """The bucket that ended before `now_s` and is still to be written, if any."""
        bucket = math.floor(now_s / self.bucket_s)
        if self._bucket is None:
            self._bucket = bucket
            return None
        return self._bucket if bucket > self._bucket else None

    def record(self, bucket: int, waiting: int) -> tuple[str, str]:
        """The HASH field and value for `bucket`, and a fresh count for the next one."""
        value = json.dumps({"t": bucket * self.bucket_s, "s": self.bucket_s, "ended": self.ended,
                            "failed": self.failed, "waiting": waiting}, separators=(",", ":"))  # fmt: skip
        self.ended = self.failed = 0
        self._bucket = bucket + 1
        return str(bucket % HISTORY_BUCKETS), value

    def write(self, r: Redis, keys: Keys, now_s: float) -> bool:
        """Write the bucket that just ended, if one did (with the jobs waiting now); whether it did."""
        bucket = self.due(now_s)
        if bucket is None:
            return False
        waiting = sum(w.total for w in read_waiting_counts(r, keys).values())
        slot, value = self.record(bucket, waiting)
        r.hset(keys.history, slot, value)
        return True


def read_history(r: Redis, keys: Keys, now_s: float) -> list[dict[str, Any]]:
    """The buckets of the last HISTORY_BUCKETS bucket lengths, oldest first, each with jobs/s
    and the failed share."""
    buckets = []
    for raw in r.hvals(keys.history):
        try:
            b = json.loads(raw)
            t, bucket_s = float(b["t"]), float(b["s"])
            ended, failed, waiting = int(b["ended"]), int(b["failed"]), int(b["waiting"])
        except (ValueError, TypeError, KeyError):
            continue  # one bad value must not break the chart
        if bucket_s > 0 and t >= now_s - HISTORY_BUCKETS * bucket_s:
            buckets.append({"t": t, "ended": ended, "failed": failed, "waiting": waiting,
                            "jobs_per_s": round(ended / bucket_s, 3),
                            "failed_share": round(failed / ended, 4) if ended else 0.0})  # fmt: skip
    return sorted(buckets, key=lambda b: b["t"])
