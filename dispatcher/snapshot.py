"""Reads every node's state from Redis in one pipelined round trip."""

from __future__ import annotations

import time

from redis import Redis
from rq.utils import as_text

from .keys import Keys
from .models import NodeState


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A HGETALL reply as text (heartbeat fields are ASCII/UTF-8)."""
    return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}


def read_nodes(r: Redis, keys: Keys, now_s: float | None = None) -> list[NodeState]:
    """All nodes that ever sent a heartbeat, sorted by id: heartbeat, liveness, queue length,
    drain and eject flags, and jobs running (rq's started registry, so current, unlike the heartbeat)."""
    node_ids = sorted(as_text(m) for m in r.smembers(keys.nodes))
    if not node_ids:
        return []
    with r.pipeline(transaction=False) as p:
        for node_id in node_ids:
            p.hgetall(keys.heartbeat(node_id))
            p.exists(keys.alive(node_id))
            p.llen(Keys.rq_queue(keys.node_queue(node_id)))
            p.exists(keys.drain_flag(node_id))
            p.exists(keys.ejected(node_id))
            p.zcard(Keys.rq_started(keys.node_queue(node_id)))  # running now, not as of the heartbeat
        replies = p.execute()
    now_s = time.time() if now_s is None else now_s
    return [
        NodeState.from_hash(node_id, decode_hash(hb), alive=bool(alive), queued=int(queued), draining=bool(drain),
                            ejected=bool(ejected), running=int(running), now_s=now_s)  # fmt: skip
        for node_id, hb, alive, queued, drain, ejected, running in zip(node_ids, *(replies[i::6] for i in range(6)))
    ]
