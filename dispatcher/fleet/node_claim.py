"""Who runs a node: one live process per node id, and each start of it a new incarnation.

The node's liveness key (keys.alive) holds the incarnation token of the process that runs the
node, refreshed by its heartbeat with a TTL (beat.lua). A process starting under a node id
claims the key (claim_node.lua):

- key absent: nobody runs the node; claimed at once;
- key held by a process that is known dead (same host and pid namespace, its pid gone or a
  zombie): taken over at once, as systemd or an operator restarting a killed worker does;
- key held otherwise: waited on for up to one TTL. It expires (the holder died elsewhere,
  e.g. a pod rescheduled to another host): claimed; it is refreshed (the holder is alive):
  refused with NodeIdInUse, so two live processes never run one node id.

A claimed node then gives back what its earlier incarnation left (health.recover_node). A
process whose key was taken over while it was stopped (SIGSTOP, a partition) learns it from
its next heartbeat, takes and starts nothing more, and stops.

Drain flag values: OPERATOR_DRAIN (`gpufleet drain`), or stop_mark(incarnation), set by a
worker process while it stops. A stop mark of another incarnation than the one holding the
liveness key is stale: it no longer drains the node (`drains`).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from redis import Redis

from ..errors import NodeIdInUse
from ..store.keys import Keys
from ..store.scripts import Scripts

log = logging.getLogger(__name__)

OPERATOR_DRAIN = "operator"  # drain flag value set by `gpufleet drain`
STOP_MARK_PREFIX = "stopping:"
CLAIM_POLL_S = 0.1


def new_incarnation() -> str:
    """A token unique to one start of one process."""
    return secrets.token_hex(6)


def stop_mark(incarnation: str) -> str:
    """The drain flag value a stopping process of `incarnation` sets."""
    return STOP_MARK_PREFIX + incarnation


def drains(drain_value: bytes | None, alive_value: bytes | None) -> bool:
    """Whether a drain flag holding `drain_value` drains a node whose liveness key holds
    `alive_value`: any flag does, except a stop mark of an incarnation that no longer holds it."""
    if drain_value is None:
        return False
    prefix = STOP_MARK_PREFIX.encode()
    if drain_value.startswith(prefix) and alive_value is not None:
        return drain_value[len(prefix) :] == alive_value
    return True


def holder_name(incarnation: str, slot: int) -> str:
    """One worker process of a node: its incarnation and slot (names its held list)."""
    return f"{incarnation}.{slot}"


def worker_name(node_id: str, holder: str) -> str:
    """A new rq worker name for `holder`: `worker_prefix`, its pid and a random tail (rq refuses
    a name whose earlier worker did not register its death, as when Redis went away)."""
    return f"{worker_prefix(node_id, holder)}{os.getpid()}.{secrets.token_hex(2)}"


def worker_prefix(node_id: str, holder: str) -> str:
    """What every rq worker name of `holder` starts with: started jobs are matched by it."""
    return f"{node_id}.{holder}."


def worker_pid(worker: str, node_id: str, incarnation: str) -> int | None:
    """The process id in the rq worker name of one of `incarnation`'s slots (worker_name's
    "<node>.<incarnation>.<slot>.<pid>.<tail>"), or None for any other name."""
    prefix = f"{node_id}.{incarnation}."
    if not worker.startswith(prefix):
        return None
    parts = worker[len(prefix) :].split(".")
    return int(parts[1]) if len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit() else None


@dataclass(frozen=True)
class ProcessIdentity:
    """Where a process runs, as far as telling from another process whether it is alive."""

    host: str = field(default_factory=socket.gethostname)
    pidns: str = field(default_factory=lambda: _pid_namespace())
    pid: int = field(default_factory=os.getpid)

    def fields(self) -> dict[str, str]:
        """The heartbeat fields that carry it."""
        return {"host": self.host, "pidns": self.pidns, "pid": str(self.pid)}

    def sees_dead(self, h: Mapping[str, str]) -> bool:
        """Whether the process a heartbeat `h` describes is certainly dead, seen from here: it ran
        in this host's pid namespace and its pid is gone, a zombie, or this very process."""
        if not self.pidns or h.get("host") != self.host or h.get("pidns") != self.pidns:
            return False
        try:
            pid = int(h.get("pid", ""))
        except ValueError:
            return False
        return pid == self.pid or not _running(pid)


def claim_node_id(r: Redis, keys: Keys, scripts: Scripts, node_id: str, incarnation: str, *, ttl_s: float,
                  me: ProcessIdentity | None = None, clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> None:  # fmt: skip
    """Make `incarnation` the holder of `node_id`, or raise NodeIdInUse (see the module doc)."""
    me = me or ProcessIdentity()
    alive, ttl_ms = keys.alive(node_id), int(ttl_s * 1000)
    claimed, holder = scripts.claim_node(alive, incarnation, ttl_ms)
    if claimed or holder == incarnation:  # ours already: a claim tried again after Redis went away
        return
    beat = _heartbeat(r, keys, node_id)
    if beat.get("incarnation") == holder and me.sees_dead(beat):
        claimed, _ = scripts.claim_node(alive, incarnation, ttl_ms, expected=holder or "")
        if claimed:
            log.info("node taken over from a dead process node=%s pid=%s incarnation=%s", node_id,
                     beat.get("pid"), holder)  # fmt: skip
            return
    log.warning("node id held by another process, waiting for its liveness to expire node=%s holder=%s "
                "pid=%s host=%s wait_s=%.1f", node_id, holder, beat.get("pid"), beat.get("host"), ttl_s)  # fmt: skip
    seen_ts = beat.get("ts")
    deadline = clock() + ttl_s + CLAIM_POLL_S
    while clock() < deadline:
        sleep(CLAIM_POLL_S)
        claimed, holder = scripts.claim_node(alive, incarnation, ttl_ms)
        if claimed:
            return
        beat = _heartbeat(r, keys, node_id)
        if beat.get("ts") != seen_ts:
            break
    raise NodeIdInUse(node_id, holder or "", beat.get("pid", "?"), beat.get("host", "?"))


def _heartbeat(r: Redis, keys: Keys, node_id: str) -> dict[str, str]:
    names = ("incarnation", "host", "pidns", "pid", "ts")
    values: list[bytes | None] = r.hmget(keys.heartbeat(node_id), names)  # type: ignore[assignment]
    return {k: v.decode("utf-8", "replace") for k, v in zip(names, values) if v is not None}


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:  # not Linux: no certainty about other processes, so never "known dead"
        return ""


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"  # a zombie is dead, only not reaped
    except (OSError, IndexError):
        return True
