"""Reads every node's state from Redis in two round trips, re-parsing only heartbeats that changed.

Round trip 1, one command: `SORT <nodes> BY nosort GET # GET <alive> GET <drain> GET <ejected>
GET <hb>->ts`, every node id with its three flags and its heartbeat's `ts` (SORT's GET patterns
read keys named after each member; nil when absent). The liveness key's value is the
incarnation running the node, which also tells whether a stop mark still drains it
(node_claim.drains). Round trip 2, one pipeline: per node the
queue length (LLEN) and jobs running (ZCARD of rq's started registry), both current, unlike
the heartbeat; plus HGETALL of the heartbeats not seen before or whose `ts` moved. The
dispatcher's reader also resets the runs-ended counts (keys.dispatch_ended) in one MULTI with
the counts, so what it reads there later is exactly what ended after this read. A heartbeat
rewrites the whole HASH with a new `ts` (worker/heartbeat.py), so an unchanged `ts` means an
unchanged HASH. With nodes beating every second and a refresh every 150 ms, most refreshes
fetch and parse a seventh of the hashes.

SORT's GET patterns reach keys the command does not name: fine on one Redis, refused by Redis
Cluster, which gpufleet does not use (its move scripts already span slots).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from redis import Redis
from rq.utils import as_text

from ..routing.models import NodeState
from ..store.keys import Keys
from .node_claim import drains


def decode_hash(raw: dict[bytes, bytes]) -> dict[str, str]:
    """A HGETALL reply as text (heartbeat fields are ASCII/UTF-8)."""
    return {k.decode(): v.decode("utf-8", "replace") for k, v in raw.items()}


@dataclass(frozen=True)
class _Heartbeat:
    """A node's last heartbeat, parsed: what the next refresh reuses while `ts` stays the same."""

    ts: bytes
    node: NodeState  # as parsed then; each refresh derives the node from it (NodeState.refreshed)
    sent_at_s: float | None  # `ts` as a number; None when garbled (the age then reads 0, as from_hash does)


class NodeReader:
    """Reads the fleet's nodes, keeping each parsed heartbeat until the node beats again.

    One per dispatcher (its cache is what makes a refresh cheap), made with `resets_ended`;
    `read_nodes` is the one-shot form for everyone else, which leaves the counts alone.
    """

    def __init__(self, r: Redis, keys: Keys, *, resets_ended: bool = False) -> None:
        self._r, self._keys = r, keys
        self._resets_ended = resets_ended
        self._seen: dict[str, _Heartbeat] = {}
        self._node_keys: dict[str, tuple[str, str, str]] = {}
        self._packed_ids: list[str] = []  # the nodes whose count commands `_packed` holds
        self._packed = b""
        self._hgetall: dict[str, bytes] = {}  # each node's HGETALL of its heartbeat, packed once
        self._gets = [
            "#", keys.alive("*"), keys.drain_flag("*"), keys.ejected("*"), f"{keys.heartbeat('*')}->ts"
        ]  # fmt: skip
        # SORT substitutes the first '*' of a pattern: a namespace holding one needs the long way
        self._sortable = "*" not in keys.namespace

    def read(self, now_s: float | None = None) -> list[NodeState]:
        """All nodes that ever sent a heartbeat, sorted by id: heartbeat, liveness, queue length,
        drain and eject flags, and jobs running (rq's started registry, so current)."""
        if not self._sortable:
            return read_nodes_per_key(self._r, self._keys, now_s, resets_ended=self._resets_ended)
        reply = cast(list[Any], self._r.sort(self._keys.nodes, by="nosort", get=self._gets))
        rows = sorted(zip(*[iter(reply)] * 5))  # by id: UTF-8 byte order is code point order
        if not rows:
            return []
        ids = [raw_id.decode() for raw_id, *_ in rows]  # `#` (the member itself) is never nil
        seen = self._seen
        fetch = [ts is None or (old := seen.get(node_id)) is None or old.ts != ts
                 for node_id, (*_, ts) in zip(ids, rows)]  # fmt: skip
        counts, hashes = self._exchange(ids, [node_id for node_id, f in zip(ids, fetch) if f])
        now_s = time.time() if now_s is None else now_s
        nodes = []
        count = iter(counts)
        for node_id, (_, alive, drain, ejected, ts), fetched in zip(ids, rows, fetch):
            queued, running = next(count), next(count)
            draining = drains(drain, alive)
            if fetched:
                h = decode_hash(next(hashes))
                node = NodeState.from_hash(node_id, h, alive=alive is not None, queued=queued, running=running,
                                           draining=draining, ejected=ejected is not None, now_s=now_s,
                                           incarnation=_text(alive))  # fmt: skip
                if ts is not None:
                    seen[node_id] = _Heartbeat(ts, node, _number(h.get("ts")))
            else:  # the parsed heartbeat, reused as is, with this refresh's flags, counts and age
                beat = seen[node_id]
                age_s = 0.0 if beat.sent_at_s is None else max(0.0, now_s - beat.sent_at_s)
                node = beat.node.refreshed(alive is not None, draining, ejected is not None, queued, running, age_s,
                                           _text(alive))  # fmt: skip
            nodes.append(node)
        if len(seen) > len(ids):  # a node left the set: forget it
            for gone in seen.keys() - set(ids):
                del seen[gone]
                self._node_keys.pop(gone, None)
                self._hgetall.pop(gone, None)
        return nodes

    def _exchange(self, ids: list[str], fetch: list[str]) -> tuple[list[int], Iterator[dict[bytes, bytes]]]:
        """LLEN and ZCARD for every node, HGETALL for those in `fetch`: one round trip.

        A pipeline, without redis-py's per-command layers (queueing, packing, response
        callbacks: ~3.5 us a command, 7 ms for 1,000 nodes): every command is packed once per
        node (the count commands once per set of nodes) and sent as it is, in one write; the
        replies are read raw (1.5 ms for 1,000 nodes). Any error closes the connection, so a
        half-read reply stream is never reused."""
        pool = self._r.connection_pool
        conn: Any = pool.get_connection()  # redis-py's Connection methods carry no type hints
        try:
            if ids != self._packed_ids:
                pairs = [(("LLEN", q), ("ZCARD", s)) for q, s, _ in map(self._keys_of, ids)]
                commands: list[tuple[str, ...]] = [command for pair in pairs for command in pair]
                if self._resets_ended:
                    commands = [("MULTI",), *commands, ("DEL", self._keys.dispatch_ended), ("EXEC",)]
                self._packed = b"".join(conn.pack_commands(commands))
                self._packed_ids = list(ids)
            hgetall = self._hgetall
            for node_id in fetch:
                if node_id not in hgetall:
                    hgetall[node_id] = b"".join(conn.pack_command("HGETALL", self._keys_of(node_id)[2]))
            conn.send_packed_command([b"".join([self._packed, *(hgetall[node_id] for node_id in fetch)])])
            if self._resets_ended:  # OK, QUEUED per command, then EXEC's replies: the counts and DEL's
                for _ in range(2 * len(ids) + 2):
                    conn.read_response()
                counts = conn.read_response()[:-1]
            else:
                counts = [conn.read_response() for _ in range(2 * len(ids))]
            hashes = [_as_dict(conn.read_response()) for _ in fetch]
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)
        return counts, iter(hashes)

    def _keys_of(self, node_id: str) -> tuple[str, str, str]:
        """The node's queue LIST, started ZSET and heartbeat HASH keys, built once per node."""
        found = self._node_keys.get(node_id)
        if found is None:
            queue = self._keys.node_queue(node_id)
            found = self._node_keys[node_id] = (Keys.rq_queue(queue), Keys.rq_started(queue),
                                                self._keys.heartbeat(node_id))  # fmt: skip
        return found


def read_nodes(r: Redis, keys: Keys, now_s: float | None = None) -> list[NodeState]:
    """All nodes that ever sent a heartbeat, sorted by id (NodeReader.read, with nothing cached)."""
    return NodeReader(r, keys).read(now_s)


def read_nodes_per_key(r: Redis, keys: Keys, now_s: float | None = None, *, resets_ended: bool = False
                       ) -> list[NodeState]:  # fmt: skip
    """The same as `read_nodes`, one command per key: for a namespace SORT's patterns cannot name."""
    node_ids = sorted(as_text(m) for m in r.smembers(keys.nodes))
    if not node_ids:
        return []
    with r.pipeline(transaction=resets_ended) as p:
        for node_id in node_ids:
            p.hgetall(keys.heartbeat(node_id))
            p.get(keys.alive(node_id))
            p.llen(Keys.rq_queue(keys.node_queue(node_id)))
            p.get(keys.drain_flag(node_id))
            p.exists(keys.ejected(node_id))
            p.zcard(Keys.rq_started(keys.node_queue(node_id)))
        if resets_ended:
            p.delete(keys.dispatch_ended)
        replies = p.execute()[:6 * len(node_ids)]
    now_s = time.time() if now_s is None else now_s
    return [
        NodeState.from_hash(node_id, decode_hash(hb), alive=alive is not None, queued=int(queued),
                            draining=drains(drain, alive), ejected=bool(ejected), running=int(running), now_s=now_s,
                            incarnation=_text(alive))
        for node_id, hb, alive, queued, drain, ejected, running in zip(node_ids, *(replies[i::6] for i in range(6)))
    ]  # fmt: skip


def _as_dict(reply: Any) -> dict[bytes, bytes]:
    """A raw HGETALL reply: a map under RESP3, a flat field/value list under RESP2."""
    return reply if isinstance(reply, dict) else dict(zip(reply[0::2], reply[1::2]))


def _text(raw: bytes | None) -> str:
    return "" if raw is None else raw.decode("utf-8", "replace")


def _number(raw: str | None) -> float | None:
    try:
        return float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
