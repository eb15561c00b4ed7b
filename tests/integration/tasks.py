"""Tasks the process-level tests run beside the built-in ones (workers started with
`--allow tests.integration.tasks`, or NodeWorkers built with it allowed)."""

from __future__ import annotations

import ctypes
import os
import time
from typing import Any

import redis

from gpufleet.dispatcher.fleet.health import Leftovers, requeue_node
from gpufleet.dispatcher.settings import Settings
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.dispatcher.store.scripts import Scripts
from gpufleet.worker import context
from gpufleet.worker.batching import batched


@batched(max_size=3, max_wait_ms=60_000)
def three_at_once(inputs: list[Any]) -> list[Any]:
    """A batch of exactly three: the gather stops as soon as it has them, so a test of which
    jobs join never depends on how long the machine takes to look (the wait is a minute)."""
    return inputs


def hold_gil(seconds: int) -> str:
    """Sleep in C without releasing the GIL (ctypes.PyDLL keeps it held), as a catastrophic
    regular expression or a long C extension call does: no other thread of this process runs."""
    ctypes.PyDLL(None).sleep(seconds)
    return "held"


def handed_back_while_running(spec: dict[str, Any]) -> str:
    """While this job runs, its node's jobs are handed back, as the dispatcher does for a node
    it has declared dead (the job goes back to the ingress; its execution leaves the started
    registry). Input: {"redis_url", "namespace"}. The result this run returns is late."""
    settings = Settings(redis_url=spec["redis_url"], namespace=spec["namespace"])
    r, keys = redis.Redis.from_url(settings.redis_url), Keys(settings.namespace)
    node_id = context.current().node_id
    requeue_node(r, keys, Scripts(r, keys), settings, node_id, Leftovers(queued=True))
    return "late"


def handed_back_then_fails(spec: dict[str, Any]) -> None:
    """handed_back_while_running, then raise: the late failure (or retry) must not be written."""
    handed_back_while_running(spec)
    raise RuntimeError("a late failure")


def nap(spec: dict[str, Any]) -> dict[str, Any]:
    """Sleep spec["s"] seconds (a stop on request cuts the sleep short), then say who ran it."""
    time.sleep(float(spec.get("s", 0)))
    return {"pid": os.getpid(), "node": context.current().node_id}


@batched(max_size=3, max_wait_ms=500)
def naps(inputs: list[dict[str, Any]]) -> list[Any]:
    """One call for up to three jobs, sleeping the longest `s` of them once (a GPU batch's time)."""
    time.sleep(max(float(spec.get("s", 0)) for spec in inputs))
    return [{"pid": os.getpid(), "i": spec.get("i")} for spec in inputs]


_warm: list[int] = []  # this process's "model": loaded by the first job it runs


def warm_model(_: Any) -> dict[str, Any]:
    """Say whether this job found the model loaded in its process (False: it loaded it), and which process."""
    loaded = bool(_warm)
    _warm.append(1)
    context.current().models.add("toy")
    return {"pid": os.getpid(), "was_loaded": loaded}


_held: list[bytes] = []  # memory a job leaves behind in its process, as a leak would


def hold_memory(mib: int) -> dict[str, Any]:
    """Keep `mib` MiB resident in this process (every byte written, so it counts in RSS)."""
    _held.append(b"\x01" * (mib << 20))
    return {"pid": os.getpid()}


def oom_on(spec: dict[str, Any]) -> dict[str, Any]:
    """On a node of spec["nodes"], sleep spec["s"] seconds, then raise what torch raises when a GPU
    runs out of memory; elsewhere, say at once where it ran."""
    node = context.current().node_id
    if node in spec["nodes"]:
        time.sleep(float(spec.get("s", 0)))
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.78 GiB total capacity)")
    return {"node": node, "pid": os.getpid()}
