"""When a slot process makes way for a fresh one: `worker --max-jobs`, `--max-memory-mib`, and a
job that ran out of CUDA memory. The checks are pure; worker/node_worker.py acts on them.

A slot that crosses a line records the run that crossed it, takes nothing more and exits with
EXIT_RECYCLE. Its node process (worker/run.py) starts a new one at once, under the same node id
and incarnation: the node stays alive throughout, whatever the node queue holds waits there for
the new slot, and the new process loads its models afresh, as the first one did. Memory a
long-lived process gathers (fragmentation, a leak in a library, CUDA's caching allocator) goes
with the old process.
"""

from __future__ import annotations

import os
import resource
import sys
from collections.abc import Callable
from dataclasses import dataclass

EXIT_RECYCLE = 4  # a slot process that exits with this is replaced at once (no backoff, nothing handed back)
MAX_JOBS, MAX_MEMORY, CUDA_OOM = "max_jobs", "max_memory", "cuda_oom"  # why a slot was replaced
REASONS = (MAX_JOBS, MAX_MEMORY, CUDA_OOM)  # the metric's label values, in this order
OOM_TEXT = "CUDA out of memory"  # in the message of torch's OutOfMemoryError, and of older torch's RuntimeError


@dataclass(frozen=True)
class RecycleLimits:
    """The lines a slot process must not cross (`worker --max-jobs`, `--max-memory-mib`); 0: none."""

    max_jobs: int = 0  # jobs one slot process runs (a batched call counts each of its jobs)
    max_memory_mib: int = 0  # the slot process's resident memory after a run, in MiB

    def __post_init__(self) -> None:
        if self.max_jobs < 0 or self.max_memory_mib < 0:
            raise ValueError(f"max_jobs and max_memory_mib must be >= 0 (0: no limit); got {self.max_jobs}, "
                             f"{self.max_memory_mib}")  # fmt: skip

    def crossed(self, jobs_run: int, rss_mib: Callable[[], float]) -> str | None:
        """Why a slot process that has run `jobs_run` jobs must be replaced now, or None; its
        memory (`rss_mib()`) is read only when there is a memory limit."""
        if self.max_jobs and jobs_run >= self.max_jobs:
            return MAX_JOBS
        if self.max_memory_mib and rss_mib() > self.max_memory_mib:
            return MAX_MEMORY
        return None


NO_LIMITS = RecycleLimits()


def rss_mib() -> float:
    """This process's resident memory now, in MiB (/proc/self/statm); where /proc is missing, its
    peak so far (getrusage), the closest the standard library comes."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**20 if sys.platform == "darwin" else 2**10)


def is_cuda_oom(error: BaseException) -> bool:
    """Whether a job's error is a GPU running out of memory: torch's OutOfMemoryError (known by
    its class name, so torch is never imported here), or any error whose message says "CUDA out
    of memory", anywhere in the chain of causes."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if any(c.__name__ == "OutOfMemoryError" and c.__module__.startswith("torch") for c in type(e).__mro__):
            return True
        if OOM_TEXT in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False
