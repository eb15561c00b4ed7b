"""The Lua scripts in lua/, loaded once; one typed method per script (callers never see KEYS).

`register_script` runs EVALSHA and reloads a script Redis forgot (NOSCRIPT), as redis-py does.
Scripts that act on jobs found by a read (two-phase: read where jobs are, then move them
atomically) re-check each job's place inside the script, so a job that moved meanwhile is
skipped, never duplicated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files

from redis import Redis
from redis.client import Pipeline
from rq.utils import now, utcformat

from .keys import RQ_QUEUES, JobField, Keys

_SOURCES = {
    f.name.removesuffix(".lua"): f.read_text(encoding="utf-8")
    for f in files("dispatcher").joinpath("lua").iterdir()
    if f.name.endswith(".lua")
}


MAX_NODES_PER_MOVE = 65535  # move_to_nodes names a job's node in two bytes


@dataclass(frozen=True)
class JobPlace:
    """Where a job sits: a LIST holding its id, or a ZSET holding `member` (default: the id)."""

    job_id: str
    source: str
    batch_id: str = ""
    member: str = ""


@dataclass(frozen=True)
class Ending:
    """A job to end for good, the registry (ZSET) to file it in, and why."""

    place: JobPlace
    registry: str
    reason: str


class Scripts:
    """Atomic multi-key moves between gpufleet's queues."""

    def __init__(self, r: Redis, keys: Keys) -> None:
        self._keys = keys
        self._run = {name: r.register_script(src) for name, src in _SOURCES.items()}

    def move_to_nodes(self, ingress_queue: str, moves: Sequence[tuple[str, str]]) -> list[bool]:
        """Move (job id, node id) pairs out of `ingress_queue`; True for each job moved."""
        if not moves:
            return []
        index: dict[str, int] = {}  # node id -> its 1-based place among the batch's nodes
        for _, node_id in moves:
            index.setdefault(node_id, len(index) + 1)
        if len(index) > MAX_NODES_PER_MOVE:
            raise ValueError(f"one move reaches at most {MAX_NODES_PER_MOVE} nodes, not {len(index)}")
        queues = [self._keys.node_queue(node_id) for node_id in index]
        keys = [Keys.rq_queue(ingress_queue), RQ_QUEUES, *map(Keys.rq_queue, queues)]
        node_of_job = b"".join(index[node_id].to_bytes(2, "big") for _, node_id in moves)
        args: list[str | bytes] = [JobField.NODE, Keys.rq_job(""), node_of_job]
        for queue, node_id in zip(queues, index):
            args += [queue, node_id]
        args += [job_id for job_id, _ in moves]
        return [flag == 1 for flag in self._run["move_to_nodes"](keys=keys, args=args)]

    def return_to_ingress(self, priority: str, places: Sequence[JobPlace], *, at_front: bool = True,
                          counter: str = "") -> list[bool]:  # fmt: skip
        """Put jobs back in the ingress of `priority`, in the given order; True for each returned.
        `counter`: a batch counter to decrement for each (a failed job coming back)."""
        if not places:
            return []
        ingress = self._keys.ingress_queue(priority)
        keys = [Keys.rq_queue(ingress), RQ_QUEUES]
        args = [ingress, "1" if at_front else "0", JobField.NODE]
        for p in places:
            keys += [p.source, Keys.rq_job(p.job_id), self._keys.batch_info(p.batch_id)]
            args += [p.job_id, p.member or p.job_id, counter]
        return [flag == 1 for flag in self._run["return_to_ingress"](keys=keys, args=args)]

    def end_jobs(self, endings: Sequence[Ending], *, status: str, counter: str, ttl_s: int) -> list[bool]:
        """End jobs for good with `status` (failed, canceled); True for each ended."""
        if not endings:
            return []
        keys: list[str] = []
        args = [status, counter, str(ttl_s), JobField.ERROR, utcformat(now())]
        for e in endings:
            keys += [e.place.source, Keys.rq_job(e.place.job_id), e.registry, self._keys.batch_info(e.place.batch_id)]
            args += [e.place.job_id, e.place.member or e.place.job_id, e.reason]
        return [flag == 1 for flag in self._run["end_jobs"](keys=keys, args=args)]

    def claim_jobs(self, node_queue: str, job_ids: Sequence[str]) -> list[str]:
        """Take these jobs out of `node_queue` (rq's intermediate list gets them, as rq's own
        dequeue does); the ids actually claimed, in order."""
        if not job_ids:
            return []
        keys = [Keys.rq_queue(node_queue), Keys.rq_intermediate(node_queue)]
        flags = self._run["claim_jobs"](keys=keys, args=list(job_ids))
        return [job_id for job_id, flag in zip(job_ids, flags) if flag == 1]

    def take_next_job(self, pipeline: Pipeline, node_queue: str) -> None:
        """Queue on `pipeline` the taking of `node_queue`'s head into rq's intermediate list (as
        rq's dequeue does) with its job HASH; the reply is [job id, [field, value, ...]], or
        None when the queue was empty. EVAL with the source, not EVALSHA: inside a transaction
        a script Redis forgot cannot be reloaded and retried (Redis caches the compiled body)."""
        pipeline.eval(_SOURCES["take_next_job"], 2, Keys.rq_queue(node_queue), Keys.rq_intermediate(node_queue),
                      Keys.rq_job(""))  # fmt: skip

    def put_back_job(self, node_queue: str, job_id: str) -> bool:
        """A job taken by take_next_job but never started goes back to the head of `node_queue`."""
        keys = [Keys.rq_queue(node_queue), Keys.rq_intermediate(node_queue)]
        return bool(self._run["put_back_job"](keys=keys, args=[job_id]) == 1)

    def renew_lease(self, token: str, ttl_ms: int) -> bool:
        return bool(self._run["renew_lease"](keys=[self._keys.dispatcher_lease], args=[token, ttl_ms]) == 1)

    def release_lease(self, token: str) -> bool:
        return bool(self._run["release_lease"](keys=[self._keys.dispatcher_lease], args=[token]) == 1)
