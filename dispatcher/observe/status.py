"""The fleet at a glance: nodes, their GPUs and ingress depth, as the stable `status --json` record.

A node's state has one set of words, defined here and used by `status`, `top`, the
`gpufleet_nodes` metric and (through `NodeState.alive`) the autoscaler:

- *live*: its liveness key exists (`NodeState.alive`): a worker process beat within the last
  `heartbeat_ttl_s`. The autoscaler sizes the fleet by live nodes and `top` shows them against
  the desired count.
- *accepting*: live and neither draining, ejected nor unhealthy (`NodeState.accepting`):
  routing may send it jobs.
- `state`, one word per node: `alive` (live and accepting), `draining`, `ejected`, `unhealthy`
  (live, not accepting, and why), or `dead` (not live). So live = every state but `dead`.

A node dead for longer than `forget_dead_after_s` since its last heartbeat drops out of the view
(status, top, metrics); it stays in Redis until `gpufleet forget NODE` removes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis import Redis

from ..fleet.snapshot import read_nodes
from ..fleet.tenants import read_waiting
from ..routing.models import OPENAI, NodeState
from ..settings import FORGET_DEAD_AFTER_S
from ..store.keys import PRIORITIES, Keys

STATES = ("alive", "draining", "ejected", "unhealthy", "dead")  # every state word, in the order summaries use


def node_state_word(n: NodeState) -> str:
    """The node's one-word state: dead | alive (accepting) | draining | ejected | unhealthy."""
    if not n.alive:
        return "dead"
    if n.accepting:
        return "alive"
    if n.draining:
        return "draining"
    return "ejected" if n.ejected else "unhealthy"


def state_counts(states: Iterable[str]) -> dict[str, int]:
    """How many nodes are in each state (every word, 0 included), and `live`: all but dead."""
    words = list(states)
    counts = {"live": sum(w != "dead" for w in words)}
    counts.update({state: words.count(state) for state in STATES})
    return counts


def in_view(n: NodeState, forget_dead_after_s: float) -> bool:
    """False for a node dead for longer than `forget_dead_after_s` since its last heartbeat
    (0: every node stays in view); such a node is left out of status, top and metrics."""
    return n.alive or not forget_dead_after_s or n.heartbeat_age_s <= forget_dead_after_s


def nodes_in_view(nodes: Sequence[NodeState], forget_dead_after_s: float) -> list[NodeState]:
    return [n for n in nodes if in_view(n, forget_dead_after_s)]


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


def read_status(r: Redis, keys: Keys, *, forget_dead_after_s: float = FORGET_DEAD_AFTER_S,
                now_s: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Every node in view, the jobs waiting at each priority (its ingress and its lanes) and
    every tenant (three round trips); `hidden_dead` counts the nodes left out for being dead
    longer than `forget_dead_after_s`."""
    every = read_nodes(r, keys, now_s)
    nodes = nodes_in_view(every, forget_dead_after_s)
    waiting, tenants = read_waiting(r, keys)
    desired = r.get(keys.desired_nodes)
    states = [node_state_word(n) for n in nodes]
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "namespace": keys.namespace,
        "ingress": {priority: waiting[priority].total for priority in PRIORITIES},
        "tenants": [t.as_json() for t in tenants],
        "desired_nodes": None if desired is None else int(desired),
        "counts": state_counts(states),
        "hidden_dead": len(every) - len(nodes),
        "nodes": [
            {
                "node": n.node_id,
                "state": state,
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
                "backend": n.backend,
                **({"server_waiting": n.server_waiting, "kv_cache_usage": round(n.kv_cache_usage, 4)}
                   if n.backend == OPENAI else {}),
                "probe": n.probe,
                "health_reason": n.health_reason,
                "gpus": [gpu_record(g) for g in gpu_list(n.gpus_json)],
            }
            for n, state in zip(nodes, states)
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
