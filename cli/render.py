"""Human output: pure functions from plain data to text, testable without Redis."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A left-aligned text table; numbers are right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and bool(rows) for i in range(len(headers))]
    lines = []
    for r in cells:
        lines.append("  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip())
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    return "-" if v is None else str(v)


def percent(ratio: float) -> str:
    return f"{100 * ratio:.0f}%"


def render_status(status: dict[str, Any]) -> str:
    """`gpufleet status` as text: one row per node, then the ingress depth per priority."""
    nodes = status["nodes"]
    if nodes:
        rows = [
            [n["node"], n["state"], percent(n["gpu_util"]), percent(n["mem_util"]), n["queued"], n["running"],
             n["completed"], n["failed"], f"{n['heartbeat_age_s']:.1f}s"]
            for n in nodes
        ]  # fmt: skip
        body = table(["NODE", "STATE", "GPU", "MEM", "QUEUED", "RUNNING", "DONE", "FAILED", "HEARTBEAT"], rows)
    else:
        body = "no nodes yet: start one with `gpufleet worker`"
    alive = sum(n["state"] == "alive" for n in nodes)
    ingress = "  ".join(f"{p}={d}" for p, d in status["ingress"].items())
    return f"{body}\n\nnodes: {alive} alive of {len(nodes)}    ingress: {ingress}"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def render_latency_table(latencies_by_node: dict[str, list[float]]) -> str:
    """Per node: jobs run, mean and p95 latency (seconds from submit to end)."""
    rows = []
    for node, values in sorted(latencies_by_node.items()):
        values = sorted(values)
        rows.append([node, len(values), sum(values) / len(values), percentile(values, 95)])
    return table(["NODE", "JOBS", "MEAN_S", "P95_S"], rows)
