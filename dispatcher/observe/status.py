"""The fleet at a glance: nodes, their GPUs and ingress depth, as the stable `status --json` record."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from redis import Redis

from ..store.keys import PRIORITIES, Keys
from ..routing.models import NodeState
from ..fleet.snapshot import read_nodes


def node_state_word(n: NodeState) -> str:
    """dead | draining | ejected | unhealthy | alive."""
    if not n.alive:
        return "dead"
    if n.draining:
        return "draining"
    if n.ejected:
        return "ejected"
    return "alive" if n.healthy else "unhealthy"


@dataclass(frozen=True)
class GpuFigure:
    """One accelerator as a node's heartbeat reported it; None: a figure that GPU does not report."""

    gpu: str  # its label ("0"; "0:1" for MIG instance 1 of GPU 0), or "all" for a node that reports no GPU list
    util: float | None  # 0..1; None on a MIG instance (NVML has no per-instance utilization)
    mem_util: float  # 0..1
    name: str = ""
    mem_used_gib: float | None = None
    mem_total_gib: float | None = None
    temperature_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    healthy: bool | None = None
    problem: str = ""  # why it is unhealthy, as NVML said


def gpu_list(raw_gpus: str | None) -> tuple[GpuFigure, ...]:
    """The GPUs in a heartbeat's `gpus` JSON list (worker/gpu.py's GpuReading fields); () for a
    node that sends none, or a list that cannot be read."""
    try:
        return tuple(_gpu_figure(g) for g in (json.loads(raw_gpus) if raw_gpus else []))
    except (ValueError, TypeError, KeyError):
        return ()


def gpu_figures(node: NodeState, raw_gpus: str | None) -> tuple[GpuFigure, ...]:
    """The GPUs in the list; with none, the node's aggregates as gpu="all"."""
    return gpu_list(raw_gpus) or (GpuFigure("all", node.gpu_util, node.mem_util),)


def _gpu_figure(g: Mapping[str, Any]) -> GpuFigure:
    used, total = float(g["mem_used_gib"]), float(g["mem_total_gib"])
    return GpuFigure(
        gpu=str(g.get("label") or int(g["index"])),
        util=_ratio_or_none(g["util"]),
        mem_util=_ratio(used / total) if total else 0.0,
        name=str(g.get("name", "")),
        mem_used_gib=used,
        mem_total_gib=total,
        temperature_c=_float_or_none(g.get("temperature_c")),
        power_w=_float_or_none(g.get("power_w")),
        power_limit_w=_float_or_none(g.get("power_limit_w")),
        healthy=bool(g.get("healthy", True)),
        problem=str(g.get("problem", "")),
    )


def gpu_record(g: GpuFigure) -> dict[str, Any]:
    """One GPU in `status --json`."""
    return {
        "gpu": g.gpu,
        "name": g.name,
        "util": _rounded(g.util, 4),
        "mem_used_gib": _rounded(g.mem_used_gib, 3),
        "mem_total_gib": _rounded(g.mem_total_gib, 3),
        "temperature_c": _rounded(g.temperature_c, 1),
        "power_w": _rounded(g.power_w, 1),
        "power_limit_w": _rounded(g.power_limit_w, 1),
        "healthy": g.healthy,
        "problem": g.problem,
    }


def read_status(r: Redis, keys: Keys) -> dict[str, Any]:
    """Every node and every ingress queue (two round trips)."""
    nodes = read_nodes(r, keys)
    with r.pipeline(transaction=False) as p:
        for priority in PRIORITIES:
            p.llen(Keys.rq_queue(keys.ingress_queue(priority)))
        p.get(keys.desired_nodes)
        *depths, desired = p.execute()
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "namespace": keys.namespace,
        "ingress": dict(zip(PRIORITIES, depths)),
        "desired_nodes": None if desired is None else int(desired),
        "nodes": [
            {
                "node": n.node_id,
                "state": node_state_word(n),
                "gpu_util": round(n.gpu_util, 4),
                "mem_util": round(n.mem_util, 4),
                "queued": n.queued,
                "running": n.running,
                "completed": n.completed,
                "failed": n.failed,
                "capacity": n.capacity,
                "service_time_s": round(n.service_time_s, 6),
                "heartbeat_age_s": round(n.heartbeat_age_s, 3),
                "incarnation": n.incarnation or None,
                "gpu_count": n.gpu_count,
                "gpu_name": n.gpu_name,
                "models": list(n.models),
                "probe": n.probe,
                "health_reason": n.health_reason,
                "gpus": [gpu_record(g) for g in gpu_list(n.gpus_json)],
            }
            for n in nodes
        ],
    }


def _ratio(x: float) -> float:
    return min(1.0, max(0.0, x))


def _ratio_or_none(x: Any) -> float | None:
    return None if x is None else _ratio(float(x))


def _float_or_none(x: Any) -> float | None:
    return None if x is None else float(x)


def _rounded(x: float | None, digits: int) -> float | None:
    return None if x is None else round(x, digits)
