"""The dispatcher's NodeReader re-reads only heartbeats whose `ts` moved, yet reads the same
nodes as the one-command-per-key read (plain commands: fakeredis stands in for Redis)."""

from __future__ import annotations

import fakeredis
import pytest

from gpufleet.dispatcher.fleet.snapshot import NodeReader, read_nodes, read_nodes_per_key
from gpufleet.dispatcher.routing.models import NodeState
from gpufleet.dispatcher.store.keys import Keys
from gpufleet.worker.gpu import GpuReading, Reading
from gpufleet.worker.heartbeat import NodeInfo, heartbeat_fields
from gpufleet.worker.stats import StatsView
from tests.conftest import write_heartbeat

KEYS = Keys("t")


def beat(r: fakeredis.FakeRedis, node_id: str, completed: int, now_s: float, keys: Keys = KEYS) -> None:
    reading = Reading.aggregate("nvml", (GpuReading(0, "H200", 0.5, 40, 140),))
    view = StatsView(running=1, completed=completed, failed=0, service_time_s=0.2, busy_fraction=0.5)
    write_heartbeat(r, keys, node_id, heartbeat_fields(NodeInfo(node_id), view, reading, now_s=now_s), ttl_s=5)


def test_a_cached_read_matches_a_full_read_as_the_fleet_changes() -> None:
    r = fakeredis.FakeRedis()
    reader = NodeReader(r, KEYS)
    for i in range(5):
        beat(r, f"n{i}", 0, 100.0)
    assert reader.read(now_s=100.5) == read_nodes_per_key(r, KEYS, now_s=100.5)
    beat(r, "n1", 7, 101.0)  # a new heartbeat: re-read
    r.rpush(Keys.rq_queue(KEYS.node_queue("n2")), "j1", "j2")  # counts and flags: read every time
    r.zadd(Keys.rq_started(KEYS.node_queue("n3")), {"j0:x": 1})
    r.set(KEYS.drain_flag("n3"), "1")
    r.set(KEYS.ejected("n4"), "0.9")
    r.delete(KEYS.alive("n0"))
    nodes = reader.read(now_s=102.0)
    assert nodes == read_nodes_per_key(r, KEYS, now_s=102.0)
    assert [(n.node_id, n.alive, n.queued, n.running, n.draining, n.ejected) for n in nodes] == [
        ("n0", False, 0, 0, False, False), ("n1", True, 0, 0, False, False), ("n2", True, 2, 0, False, False),
        ("n3", True, 0, 1, True, False), ("n4", True, 0, 0, False, True)]  # fmt: skip
    assert (nodes[1].completed, nodes[1].heartbeat_age_s, nodes[2].heartbeat_age_s) == (7, 1.0, 2.0)


def test_a_node_that_leaves_the_set_is_forgotten() -> None:
    r = fakeredis.FakeRedis()
    reader = NodeReader(r, KEYS)
    beat(r, "a", 0, 100.0)
    beat(r, "b", 0, 100.0)
    assert [n.node_id for n in reader.read()] == ["a", "b"]
    r.srem(KEYS.nodes, "a")
    assert [n.node_id for n in reader.read()] == ["b"]
    assert reader.read(now_s=100.0) == read_nodes(r, KEYS, now_s=100.0)


def test_a_namespace_that_sort_patterns_cannot_name_is_read_key_by_key() -> None:
    r = fakeredis.FakeRedis()
    keys = Keys("fleet*1")
    beat(r, "a", 3, 100.0, keys)
    [n] = read_nodes(r, keys, now_s=101.0)
    assert (n.node_id, n.alive, n.completed, n.heartbeat_age_s) == ("a", True, 3, 1.0)


def test_no_nodes_reads_as_none() -> None:
    assert read_nodes(fakeredis.FakeRedis(), KEYS) == []


def test_a_heartbeat_is_parsed_again_only_when_its_ts_moves() -> None:
    """The contract the cache rests on: every heartbeat rewrites `ts`. A field changed behind
    the writer's back is seen at the node's next beat, not before."""
    r = fakeredis.FakeRedis()
    reader = NodeReader(r, KEYS)
    beat(r, "a", 1, 100.0)
    assert reader.read()[0].completed == 1
    r.hset(KEYS.heartbeat("a"), "completed", "50")
    assert reader.read()[0].completed == 1
    beat(r, "a", 2, 101.0)
    assert reader.read()[0].completed == 2


def test_a_refresh_derives_each_node_as_replace_would_from_its_parsed_heartbeat() -> None:
    """The fast path keeps the heartbeat's fields as parsed and swaps the seven a read finds
    afresh; the record stays immutable (a NamedTuple: no __dict__ to write)."""
    parsed = NodeState.from_hash("a", {"ts": "99", "capacity": "4", "models": "llama", "labels": '{"zone": "b"}'},
                                 alive=True, queued=1, now_s=100.0, running=2, incarnation="i1")  # fmt: skip
    fresh = parsed.refreshed(False, True, True, 7, 3, 5.5, "")
    assert fresh == parsed._replace(alive=False, draining=True, ejected=True, queued=7, running=3,
                                    heartbeat_age_s=5.5, incarnation="")  # fmt: skip
    assert (fresh.capacity, fresh.models, fresh.labels) == (4, ("llama",), {"zone": "b"})
    assert parsed.with_extra_load(2) == parsed._replace(queued=3)
    with pytest.raises(AttributeError):
        parsed.queued = 5  # type: ignore[misc]


@pytest.mark.parametrize("keys", [KEYS, Keys("t*")], ids=["sort", "per-key"])
def test_only_the_dispatchers_reader_resets_the_ended_counts(keys: Keys) -> None:
    """The dispatcher's read is the base its later end counts are taken off: it resets them in
    the same atomic step as the counts; anyone else's read (status, top) leaves them alone."""
    r = fakeredis.FakeRedis()
    beat(r, "a", 0, 100.0, keys)
    r.hset(keys.dispatch_ended, "a", 2)
    NodeReader(r, keys).read(now_s=100.5)
    read_nodes(r, keys, now_s=100.5)
    assert r.hgetall(keys.dispatch_ended) == {b"a": b"2"}
    nodes = NodeReader(r, keys, resets_ended=True).read(now_s=100.5)
    assert not r.exists(keys.dispatch_ended)
    assert nodes == read_nodes(r, keys, now_s=100.5)
