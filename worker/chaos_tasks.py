"""The fault suite's task (bench/chaos.py): it counts its own executions outside Redis.

Each run appends one line `<job index> <attempt>:<node> <pid>` to the file named by
GPUFLEET_CHAOS_LOG, before it sleeps, so a run that a fault cuts short still counts. The
attempt is the one the worker believes it runs (NodeWorker._attempt: gf_attempts read at
dequeue, plus one, the number its fence check and its logs use), so the suite can tell
whether a job's result came from its newest attempt. Workers run it only with
`--allow gpufleet.worker.chaos_tasks`.
"""

from __future__ import annotations

import os
import time
from typing import Any

from rq import get_current_job

from . import context
from .node_worker import NodeWorker

LOG_ENV = "GPUFLEET_CHAOS_LOG"


def record(spec: dict[str, Any]) -> dict[str, Any]:
    """Log this execution, sleep `cost` seconds, and say who ran it.

    Input: {"i": job index, "cost"?: seconds}. Returns {"i", "pid", "node", "attempt"}.
    """
    job = get_current_job()
    assert job is not None, "record runs only as a worker's job"
    node = context.current().node_id
    attempt = NodeWorker._attempt(job)  # the worker's own count, not a copy of it
    line = f"{spec['i']} {attempt}:{node} {os.getpid()}\n".encode()
    fd = os.open(os.environ[LOG_ENV], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)  # one write of the whole line: concurrent appenders never interleave
    finally:
        os.close(fd)
    time.sleep(float(spec.get("cost", 0)))
    return {"i": spec["i"], "pid": os.getpid(), "node": node, "attempt": attempt}
