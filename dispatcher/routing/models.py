"""The two plain records everything else passes around: a job's routing needs and a node's state.

Both are immutable; `NodeState.from_hash` is pure parsing of a decoded heartbeat HASH.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

# What runs a job (JobSpec.backend) and what a node's workers run (NodeState.backend): a job
# goes only to nodes of its backend, so a forwarded OpenAI request never lands on a worker of
# Python functions, nor a Python job on a forwarder.
PYTHON = "python"
OPENAI = "openai"
# The weight of a node's newest run in its service time (NodeState.service_time_s): the worker's
# EWMA (worker/stats.py), which the simulator's loop model reproduces.
SERVICE_TIME_EWMA_ALPHA = 0.2


@dataclass(frozen=True)
class JobSpec:
    """What one job asks for: the function, its input and what routing must respect.

    Not checked when built: routing and the simulator build partial ones (func="") per job.
    Submitter.submit checks each field as a job file's line is checked (jobfile.check_specs)."""

    func: str
    input: Any = None
    client_id: str | None = None
    model: str | None = None
    affinity: str | None = None
    priority: str = "normal"
    timeout_s: int | None = None
    retries: int = 0
    gpu_mem_gib: float = 0.0
    backend: str = PYTHON  # what runs it: a Python function (PYTHON) or a forwarded OpenAI request (OPENAI)


class NodeState(NamedTuple):
    """One node as the dispatcher sees it: what this read found (liveness, flags, queue and
    running counts, the heartbeat's age), then the node's last heartbeat, parsed.

    A NamedTuple, not a frozen dataclass: immutable with no way around it (no `__dict__`, no
    `object.__setattr__`), and cheap to derive, which the snapshot does for every node on every
    refresh (`refreshed`: 0.6 us; a frozen dataclass's __init__ over these 28 fields takes 4 us,
    `dataclasses.replace` 9). Derive with `_replace`, or `refreshed` for what a read changes.
    """

    node_id: str
    # what a read finds afresh (fleet/snapshot.py): `refreshed` replaces exactly these seven
    alive: bool = True
    draining: bool = False  # `gpufleet drain`, or a worker stopping
    ejected: bool = False  # failing too often: out of routing for a cool-down
    queued: int = 0
    running: int = 0
    heartbeat_age_s: float = 0.0
    incarnation: str = ""  # the process running the node now (its liveness key's value; "" when dead)
    # the last heartbeat, as parsed once (from_hash) and reused until the node beats again
    healthy: bool = True  # False when NVML reports a GPU error
    health_reason: str = ""
    capacity: int = 1
    batch_max: int = 1  # the largest batch a @batched task asked for on this node (1: none)
    completed: int = 0
    failed: int = 0
    gpu_util: float = 0.0  # 0..1, mean over the node's GPUs
    mem_util: float = 0.0  # 0..1, GPU memory used / total
    gpu_count: int = 0
    gpu_name: str = ""
    gpu_mem_total_gib: float = 0.0
    gpu_mem_free_gib: float = float("inf")  # a node that reports no GPU never filters on memory
    service_time_s: float = 1.0  # EWMA of job run time on this node
    speed: float = 1.0  # relative throughput (the sim probe's --sim-speed; 1 otherwise)
    weight: float = 1.0  # static weight for weighted round robin
    models: tuple[str, ...] = ()
    backend: str = PYTHON  # what its workers run: Python functions, or OpenAI requests forwarded to a server
    server_waiting: int = 0  # a forwarder's server: requests in its own queue (from its /metrics)
    kv_cache_usage: float = 0.0  # a forwarder's server: KV-cache use, 0..1 (from its /metrics)
    gpus_json: str = ""  # the heartbeat's per-GPU list, as sent (parsed only where it is shown)
    probe: str = ""
    version: str = ""
    labels: Mapping[str, str] = MappingProxyType({})

    @property
    def accepting(self) -> bool:
        """Whether routing may send this node anything now."""
        return self.alive and self.healthy and not self.draining and not self.ejected

    @property
    def load(self) -> int:
        """Jobs on the node: waiting in its queue plus running."""
        return self.queued + self.running

    def with_extra_load(self, n_jobs: int) -> NodeState:
        """This node with `n_jobs` more queued: what the dispatcher sent since the read. A
        negative `n_jobs` is runs that ended since: each freed slot takes a queued job, so the
        queue shrinks first, then the jobs running."""
        queued = self.queued + n_jobs
        running = self.running + min(0, queued)
        return self.refreshed(self.alive, self.draining, self.ejected, max(0, queued), max(0, running),
                              self.heartbeat_age_s, self.incarnation)  # fmt: skip

    def refreshed(self, alive: bool, draining: bool, ejected: bool, queued: int, running: int,
                  heartbeat_age_s: float, incarnation: str) -> NodeState:  # fmt: skip
        """This node's heartbeat with another read's liveness, flags, counts and age: `_replace`
        of those seven fields, in one tuple build that reuses the heartbeat's part as it is."""
        return NodeState._make((self.node_id, alive, draining, ejected,  # noqa: RUF005 (+ takes half unpacking's time)
                                queued, running, heartbeat_age_s, incarnation) + self[8:])  # fmt: skip

    @classmethod
    def from_hash(
        cls,
        node_id: str,
        h: Mapping[str, str],
        *,
        alive: bool,
        queued: int,
        now_s: float,
        draining: bool = False,
        ejected: bool = False,
        running: int | None = None,
        incarnation: str = "",
    ) -> NodeState:
        """Parse a decoded heartbeat HASH; a missing or garbled field takes its default. Counts
        read from Redis directly (`queued`, and `running` when given) beat the heartbeat's."""
        sent_at = _float(h, "ts", now_s)
        mem_free = h.get("gpu_mem_free_gib")
        return cls(
            node_id=node_id,
            alive=alive,
            draining=draining,
            ejected=ejected,
            healthy=h.get("healthy", "1") != "0",
            health_reason=h.get("health_reason", ""),
            capacity=max(1, _int(h, "capacity", 1)),
            batch_max=max(1, _int(h, "batch_max", 1)),
            queued=queued,
            running=_int(h, "running", 0) if running is None else running,
            completed=_int(h, "completed", 0),
            failed=_int(h, "failed", 0),
            gpu_util=_ratio(h, "gpu_util"),
            mem_util=_ratio(h, "mem_util"),
            gpu_count=_int(h, "gpu_count", 0),
            gpu_name=h.get("gpu_name", ""),
            gpu_mem_total_gib=_float(h, "gpu_mem_total_gib", 0.0),
            gpu_mem_free_gib=float("inf") if not mem_free else _float(h, "gpu_mem_free_gib", float("inf")),
            service_time_s=max(1e-6, _float(h, "service_time_s", 1.0)),
            speed=max(1e-6, _float(h, "speed", 1.0)),
            weight=max(0.0, _float(h, "weight", 1.0)),
            models=tuple(m for m in h.get("models", "").split(",") if m),
            backend=h.get("backend") or PYTHON,
            server_waiting=_int(h, "server_waiting", 0),
            kv_cache_usage=_ratio(h, "kv_cache_usage"),
            gpus_json=h.get("gpus", ""),
            heartbeat_age_s=max(0.0, now_s - sent_at),
            incarnation=incarnation,
            probe=h.get("probe", ""),
            version=h.get("version", ""),
            labels=_labels(h.get("labels", "")),
        )


def _int(h: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(float(h[name]))
    except (KeyError, ValueError):
        return default


def _float(h: Mapping[str, str], name: str, default: float) -> float:
    try:
        return float(h[name])
    except (KeyError, ValueError):
        return default


def _ratio(h: Mapping[str, str], name: str) -> float:
    return min(1.0, max(0.0, _float(h, name, 0.0)))


def _labels(raw: str) -> dict[str, str]:
    try:
        parsed = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in parsed.items()} if isinstance(parsed, dict) else {}
