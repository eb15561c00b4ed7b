"""The fleet at a glance: nodes and ingress depth, as the stable `status --json` record."""

from __future__ import annotations

import time
from typing import Any

from redis import Redis

from .keys import PRIORITIES, Keys
from .models import NodeState
from .snapshot import read_nodes


def node_state_word(n: NodeState) -> str:
    """dead | draining | ejected | unhealthy | alive."""
    if not n.alive:
        return "dead"
    if n.draining:
        return "draining"
    if n.ejected:
        return "ejected"
    return "alive" if n.healthy else "unhealthy"


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
                "gpu_count": n.gpu_count,
                "gpu_name": n.gpu_name,
                "models": list(n.models),
                "probe": n.probe,
                "health_reason": n.health_reason,
            }
            for n in nodes
        ],
    }
