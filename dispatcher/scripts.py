"""The Lua scripts in lua/, loaded once; one typed method per script (callers never see KEYS).

`register_script` runs EVALSHA and reloads a script Redis forgot (NOSCRIPT), as redis-py does.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import files

from redis import Redis

from .keys import RQ_QUEUES, JobField, Keys

_SOURCES = {
    f.name.removesuffix(".lua"): f.read_text(encoding="utf-8")
    for f in files("dispatcher").joinpath("lua").iterdir()
    if f.name.endswith(".lua")
}


class Scripts:
    """Atomic multi-key moves between gpufleet's queues."""

    def __init__(self, r: Redis, keys: Keys) -> None:
        self._keys = keys
        self._run = {name: r.register_script(src) for name, src in _SOURCES.items()}

    def move_to_nodes(self, ingress_queue: str, moves: Sequence[tuple[str, str]]) -> list[bool]:
        """Move (job id, node id) pairs out of `ingress_queue`; True for each job moved."""
        if not moves:
            return []
        keys = [Keys.rq_queue(ingress_queue), RQ_QUEUES]
        args: list[str] = [JobField.NODE]
        for job_id, node_id in moves:
            queue = self._keys.node_queue(node_id)
            keys += [Keys.rq_queue(queue), Keys.rq_job(job_id)]
            args += [job_id, queue, node_id]
        return [flag == 1 for flag in self._run["move_to_nodes"](keys=keys, args=args)]

