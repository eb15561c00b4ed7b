"""The heartbeat: every interval, one pipelined round trip that writes the node's HASH,
refreshes its liveness key (TTL) and registers the node. The fields are the message format
`dispatcher.models.NodeState.from_hash` parses."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import redis
from redis import Redis

from dispatcher.keys import Keys

from . import context
from .gpu import Probe, Reading
from .stats import NodeStats, StatsView

log = logging.getLogger(__name__)

VERSION = "0.1.0"


@dataclass(frozen=True)
class NodeInfo:
    """What a node says about itself that does not change while it runs."""

    node_id: str
    capacity: int = 1
    speed: float = 1.0
    weight: float = 1.0
    labels: Mapping[str, str] = field(default_factory=dict)
    pid: int = field(default_factory=os.getpid)


def heartbeat_fields(info: NodeInfo, view: StatsView, reading: Reading, *, models: tuple[str, ...] = (),
                     now_s: float | None = None) -> dict[str, str]:  # fmt: skip
    """The heartbeat HASH for one instant (pure).

    `capacity` is the jobs the node holds at once: its slots times the largest batch its
    batched tasks take (a slot working a batch of 32 holds 32 jobs, each for the batch's time).
    """
    mem_total = sum(g.mem_total_gib for g in reading.gpus)
    fields = {
        "ts": f"{time.time() if now_s is None else now_s:.3f}",
        "capacity": str(info.capacity * view.batch_max),
        "slots": str(info.capacity),
        "batch_max": str(view.batch_max),
        "speed": f"{info.speed:g}",
        "weight": f"{info.weight:g}",
        "running": str(view.running),
        "completed": str(view.completed),
        "failed": str(view.failed),
        "service_time_s": f"{view.service_time_s:.6f}",
        "busy": f"{view.busy_fraction:.4f}",
        "gpu_util": f"{reading.gpu_util:.4f}",
        "mem_util": f"{reading.mem_util:.4f}",
        "gpu_count": str(len(reading.gpus)),
        "gpu_name": reading.gpus[0].name if reading.gpus else "",
        "gpu_mem_total_gib": f"{mem_total:.3f}",
        "gpu_mem_free_gib": f"{mem_total - sum(g.mem_used_gib for g in reading.gpus):.3f}" if reading.gpus else "",
        "gpus": json.dumps([g.__dict__ for g in reading.gpus]),
        "models": ",".join(models),
        "healthy": "1" if reading.healthy else "0",
        "health_reason": reading.problems,
        "probe": reading.probe,
        "version": VERSION,
        "pid": str(info.pid),
        "labels": json.dumps(dict(info.labels)),
    }
    return fields


def send_heartbeat(r: Redis, keys: Keys, node_id: str, fields: Mapping[str, str], ttl_s: float) -> None:
    """Write the HASH, refresh liveness and register the node: one round trip."""
    with r.pipeline(transaction=False) as p:
        p.hset(keys.heartbeat(node_id), mapping=dict(fields))
        p.set(keys.alive(node_id), fields["ts"], px=int(ttl_s * 1000))
        p.sadd(keys.nodes, node_id)
        p.execute()


class Heartbeat(threading.Thread):
    """Sends a heartbeat every `interval_s` until stopped; survives Redis outages (one log line)."""

    def __init__(self, r: Redis, keys: Keys, info: NodeInfo, stats: NodeStats, probe: Probe, *,
                 interval_s: float, ttl_s: float) -> None:  # fmt: skip
        super().__init__(name=f"heartbeat-{info.node_id}", daemon=True)
        self._r, self._keys, self._info, self._stats, self._probe = r, keys, info, stats, probe
        self._interval_s, self._ttl_s = interval_s, ttl_s
        self._stop_event = threading.Event()

    def beat(self) -> None:
        view = self._stats.view()
        models = tuple(sorted(context.current().models | self._stats.models()))
        fields = heartbeat_fields(self._info, view, self._probe.read(), models=models)
        send_heartbeat(self._r, self._keys, self._info.node_id, fields, self._ttl_s)

    def run(self) -> None:
        failing = False
        while not self._stop_event.is_set():
            try:
                self.beat()
                if failing:
                    log.info("heartbeat restored node=%s", self._info.node_id)
                    failing = False
            except (redis.ConnectionError, redis.TimeoutError) as e:
                if not failing:
                    log.error("heartbeat failed, retrying node=%s error=%s", self._info.node_id, e)
                    failing = True
            except Exception:
                log.exception("heartbeat error node=%s", self._info.node_id)
            self._stop_event.wait(self._interval_s)

    def stop(self, *, mark_dead: bool = True) -> None:
        """Stop beating; with `mark_dead`, drop the liveness key so routing stops at once."""
        self._stop_event.set()
        self.join(timeout=self._interval_s + 1)
        if mark_dead:
            try:
                self._r.delete(self._keys.alive(self._info.node_id))
            except redis.RedisError:
                pass
