"""The demo's workload and its summary: synthetic inference jobs of varied cost."""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from gpufleet.dispatcher.routing.models import JobSpec

from .fleet import SimNode

DEMO_NODES = (SimNode("sim-1x", 1.0), SimNode("sim-2x", 2.0), SimNode("sim-4x", 4.0))
MEAN_COST_S = 0.1  # seconds on a speed-1 node


def demo_jobs(n: int, seed: int = 0) -> list[JobSpec]:
    """`n` synthetic jobs with log-normal costs (mean MEAN_COST_S), ids job-0001..."""
    rng = random.Random(seed)
    sigma = 0.5
    mu = -0.5 * sigma**2  # so the mean of lognormvariate(mu, sigma) is 1
    return [
        JobSpec(func="gpufleet.worker.tasks:synthetic",
                input={"cost": round(MEAN_COST_S * rng.lognormvariate(mu, sigma), 4)}, client_id=f"job-{i:04d}")
        for i in range(1, n + 1)
    ]  # fmt: skip


def latencies_by_node(records: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Seconds from enqueue to end for each finished job, grouped by the node that ran it."""
    out: dict[str, list[float]] = {}
    for rec in records:
        if rec.get("status") == "finished" and rec.get("ended_at") and rec.get("enqueued_at"):
            seconds = (_parse(rec["ended_at"]) - _parse(rec["enqueued_at"])).total_seconds()
            out.setdefault(rec["node"] or "?", []).append(seconds)
    return out


def _parse(iso: str) -> datetime:
    return datetime.fromisoformat(iso.replace("Z", "+00:00"))
