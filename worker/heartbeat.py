"""The heartbeat: every interval (and at once when the node's speed changes a lot), one script
call (beat.lua, one round trip) that writes the node's HASH, refreshes its liveness key
(value: this process's incarnation, TTL) and registers the node, unless another process has
taken the node over. The fields are the message format
`dispatcher.models.NodeState.from_hash` parses.

It runs in the node's own process, beside the job slots' processes: a job that holds the GIL
(a long C call) cannot stop it, so it proves the node process alive, not that each job moves."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from gpufleet.dispatcher.fleet.node_claim import ProcessIdentity
from gpufleet.dispatcher.routing.models import PYTHON
from gpufleet.dispatcher.store.connection import REDIS_DOWN
from gpufleet.dispatcher.store.scripts import Scripts

from . import context
from .gpu import Probe, Reading
from .stats import NodeStats, StatsView

if TYPE_CHECKING:  # the forwarder's modules need httpx, which only the `openai` extra installs
    from .forwarder.server import ServerState, ServerWatch

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
    incarnation: str = ""  # this start of the node's process (node_claim.new_incarnation)
    backend: str = PYTHON  # what its slots run: Python functions, or OpenAI requests forwarded to a server
    process: ProcessIdentity = field(default_factory=ProcessIdentity)


def heartbeat_fields(info: NodeInfo, view: StatsView, reading: Reading, *, models: tuple[str, ...] = (),
                     server: ServerState | None = None, now_s: float | None = None) -> dict[str, str]:  # fmt: skip
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
        "backend": info.backend,
        "healthy": "1" if reading.healthy else "0",
        "health_reason": reading.problems,
        "probe": reading.probe,
        "version": VERSION,
        "incarnation": info.incarnation,
        **info.process.fields(),
        "labels": json.dumps(dict(info.labels)),
    }
    if server is not None:  # a forwarder: its server's models, health and own queue figures
        fields["models"] = ",".join(sorted(set(models) | set(server.models)))
        if not server.healthy:
            fields["healthy"] = "0"
            fields["health_reason"] = "; ".join(p for p in (reading.problems, server.problem) if p)
        fields["server_waiting"] = str(server.waiting)
        fields["kv_cache_usage"] = f"{server.kv_cache_usage:.4f}"
    return fields


SPEED_CHECKS_PER_INTERVAL = 10  # how often between two beats the service time is looked at
SPEED_CHANGE = 2.0  # a service time this many times longer or shorter than the last one sent: beat now


def speed_changed(sent_s: float, now_s: float) -> bool:
    """Whether the service time moved enough since the last beat to tell the dispatcher at
    once: routing ranks nodes by it, and it decides whether a node's short jobs are refilled
    in batches. A new node starts from a guess (1 s), so its first jobs move it most."""
    if sent_s <= 0 or now_s <= 0:
        return sent_s != now_s
    return max(sent_s / now_s, now_s / sent_s) >= SPEED_CHANGE


class Heartbeat(threading.Thread):
    """Sends a heartbeat every `interval_s` until stopped, and at once when the node's service
    time has moved SPEED_CHANGE-fold since the last one (at most once between two regular
    beats); survives Redis outages (one log line). If another process has taken the node
    over, it stops beating and calls `on_taken_over`."""

    def __init__(self, scripts: Scripts, info: NodeInfo, stats: NodeStats, probe: Probe, *, interval_s: float,
                 ttl_s: float, on_taken_over: Callable[[], None] = lambda: None,
                 server: ServerWatch | None = None) -> None:  # fmt: skip
        super().__init__(name=f"heartbeat-{info.node_id}", daemon=True)
        self._scripts, self._info, self._stats, self._probe = scripts, info, stats, probe
        self._interval_s, self._ttl_ms = interval_s, int(ttl_s * 1000)
        self._on_taken_over = on_taken_over
        self._server = server  # a forwarder's inference server, watched in a thread of its own
        self._stop_event = threading.Event()
        self._sent_service_s = 0.0  # the service time the last beat sent
        self._early = False  # the last beat came early (the next one waits a whole interval)
        self.taken_over = False

    def beat(self) -> bool:
        """One heartbeat; False (and nothing written) once another process holds the node."""
        view = self._stats.view()
        self._sent_service_s = view.service_time_s
        models = tuple(sorted(context.current().models | self._stats.models()))
        server = self._server.state if self._server else None
        fields = heartbeat_fields(self._info, view, self._probe.read(), models=models, server=server)
        return self._scripts.beat(self._info.node_id, self._info.incarnation, self._ttl_ms, fields)

    def run(self) -> None:
        failing = False
        while not self._stop_event.is_set():
            try:
                if not self.beat():
                    log.error("node taken over by another process, stopping node=%s incarnation=%s",
                              self._info.node_id, self._info.incarnation)  # fmt: skip
                    self.taken_over = True
                    self._on_taken_over()
                    return
                if failing:
                    log.info("heartbeat restored node=%s", self._info.node_id)
                    failing = False
            except REDIS_DOWN as e:
                if not failing:
                    log.error("heartbeat failed, retrying node=%s error=%s", self._info.node_id, e)
                    failing = True
            except Exception:
                log.exception("heartbeat error node=%s", self._info.node_id)
            self._wait_for_next_beat()

    def _wait_for_next_beat(self) -> None:
        """Until the interval has passed, or the service time has moved enough to beat early
        and has settled there (moved less than that since the check before: a new node's
        average falls fast at first, and the beat sends where it lands). After an early beat
        the next wait is a whole interval: at most two beats an interval, however a node's job
        mix swings its average (1,000 nodes must not beat 10,000 times a second)."""
        check_s = self._interval_s / SPEED_CHECKS_PER_INTERVAL
        early, self._early = self._early, False
        looked_s = self._stats.service_time_s()
        for _ in range(SPEED_CHECKS_PER_INTERVAL):
            if self._stop_event.wait(check_s):
                return
            now_s = self._stats.service_time_s()
            settled = not speed_changed(looked_s, now_s)
            looked_s = now_s
            if not early and settled and speed_changed(self._sent_service_s, now_s):
                self._early = True
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=self._interval_s + 1)
