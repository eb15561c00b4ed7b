"""The router: late binding, in-flight accounting, and session persistence by rendezvous
hashing with bounded loads."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from gpufleet.dispatcher.routing.affinity import load_cap, rendezvous_order, rendezvous_score
from gpufleet.dispatcher.routing.models import OPENAI, JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import LeastConnections, ShortestExpectedDelay
from gpufleet.dispatcher.routing.router import MAX_LATENCY_PREFETCH, Router
from gpufleet.dispatcher.store.job import needs_field, needs_spec

JOB = JobSpec(func="m:f")


def node(node_id: str, **fields: Any) -> NodeState:
    """A node with defaults and only the fields the scenario is about."""
    return NodeState(node_id=node_id, **fields)


def jobs(n: int, spec: JobSpec = JOB) -> list[tuple[str, JobSpec]]:
    return [(f"j{i}", spec) for i in range(n)]


def keyed(keys: list[str]) -> list[tuple[str, JobSpec]]:
    return [(f"j{i}", JobSpec(func="m:f", affinity=k)) for i, k in enumerate(keys)]


def test_full_fleet_leaves_the_job_in_the_ingress() -> None:
    """capacity 1 + prefetch 2 = 3 jobs per node; a fourth waits for whichever frees first."""
    router = Router(ShortestExpectedDelay(), prefetch=2)
    moves, _ = router.route(jobs(1), [node("a", running=1, queued=2), node("b", running=1, queued=2)])
    assert moves == []


def test_late_binding_fills_nodes_only_to_capacity_plus_prefetch() -> None:
    router = Router(LeastConnections(), prefetch=1)
    moves, after = router.route(jobs(10), [node("a", capacity=2), node("b", capacity=1)])
    assert Counter(n for _, n in moves) == {"a": 3, "b": 2}
    assert {n.node_id: n.load for n in after} == {"a": 3, "b": 2}


def test_a_batching_node_holds_a_full_next_batch_beside_the_one_running() -> None:
    """32 running in one batch (capacity 1 slot x 32): the next 32 wait on the node, not 2."""
    router = Router(LeastConnections(), prefetch=2)
    nodes = [node("batched", capacity=32, batch_max=32, running=32), node("plain", capacity=1, running=1)]
    moves, _ = router.route(jobs(100), nodes)
    assert Counter(n for _, n in moves) == {"batched": 32, "plain": 2}
    assert NodeState.from_hash("x", {"capacity": "64", "batch_max": "32"}, alive=True, queued=0,
                               now_s=0).batch_max == 32  # fmt: skip


def test_max_node_queue_zero_never_holds_a_job_back() -> None:
    router = Router(LeastConnections(), max_node_queue=0)
    moves, _ = router.route(jobs(50), [node("a", running=1, queued=9), node("b", running=1, queued=9)])
    assert len(moves) == 50


def test_a_burst_between_heartbeats_is_spread_not_herded() -> None:
    """Four nodes that all looked idle in the last heartbeat: eight jobs go two to each,
    because each placement counts as load for the next pick."""
    router = Router(ShortestExpectedDelay(), max_node_queue=0)
    moves, _ = router.route(jobs(8), [node(x) for x in "abcd"])
    assert Counter(n for _, n in moves) == {"a": 2, "b": 2, "c": 2, "d": 2}


def test_fresh_job_counts_override_a_stale_heartbeat_for_the_bound() -> None:
    """The heartbeat says a is full, but its queue (read this pass) shows it has room."""
    router = Router(ShortestExpectedDelay(), prefetch=2)
    nodes = [node("a", running=1, queued=2)]
    assert router.route(jobs(1), nodes)[0] == []
    moves, _ = router.route(jobs(5), nodes, held={"a": 1})
    assert [n for _, n in moves] == ["a", "a"]


def test_an_affinity_key_sticks_to_one_node() -> None:
    router = Router(LeastConnections(), max_node_queue=0)
    nodes = [node(f"n{i}") for i in range(8)]
    targets = {router.route(keyed(["user-42"]), nodes)[0][0][1] for _ in range(10)}
    assert targets == {rendezvous_order("user-42", [n.node_id for n in nodes])[0]}


def test_a_node_leaving_moves_only_its_own_keys() -> None:
    """Rendezvous hashing: removing n3 re-homes exactly the keys that were on n3."""
    router = Router(LeastConnections(), max_node_queue=0)
    nodes = [node(f"n{i}") for i in range(10)]
    keys = [f"session-{i}" for i in range(1000)]

    def home(fleet: list[NodeState]) -> dict[str, str]:
        # one key at a time on an idle fleet, so only the hash decides
        return {k: router.route(keyed([k]), fleet)[0][0][1] for k in keys}

    before = home(nodes)
    after = home([n for n in nodes if n.node_id != "n3"])
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "n3"}
    assert 50 < len(moved) < 150  # about a tenth of the keys lived there


def test_a_node_joining_takes_keys_only_for_itself() -> None:
    router = Router(LeastConnections(), max_node_queue=0)
    nodes = [node(f"n{i}") for i in range(10)]
    keys = [f"session-{i}" for i in range(1000)]
    before = {k: router.route(keyed([k]), nodes)[0][0][1] for k in keys}
    after = {k: router.route(keyed([k]), [*nodes, node("n10")])[0][0][1] for k in keys}
    assert {after[k] for k in keys if before[k] != after[k]} == {"n10"}


def test_bounded_load_holds_for_a_hot_key() -> None:
    """100 jobs of one key on 5 nodes with epsilon 0.25: no node ever holds more than
    ceil(1.25 x mean), and the overflow goes down the key's rendezvous order."""
    router = Router(LeastConnections(), max_node_queue=0, affinity_epsilon=0.25)
    nodes = [node(f"n{i}") for i in range(5)]
    for placed_so_far in range(1, 101):
        _, nodes = router.route(keyed(["hot"]), nodes)
        assert max(n.load for n in nodes) <= math.ceil(1.25 * placed_so_far / 5)
    order = rendezvous_order("hot", [n.node_id for n in nodes])
    loads = {n.node_id: n.load for n in nodes}
    assert loads[order[0]] == max(loads.values())


def test_an_overloaded_affine_node_sends_the_job_to_the_next_in_rendezvous_order() -> None:
    ids = [f"n{i}" for i in range(4)]
    first, second = rendezvous_order("k", ids)[:2]
    nodes = [node(i, queued=9 if i == first else 0) for i in ids]
    moves, _ = Router(LeastConnections(), max_node_queue=0).route(keyed(["k"]), nodes)
    assert moves == [("j0", second)]


def test_affinity_skips_draining_and_full_nodes() -> None:
    ids = [f"n{i}" for i in range(4)]
    first, second, third = rendezvous_order("k", ids)[:3]
    nodes = [node(i, draining=i == first, running=1, queued=2) if i in (first, second) else node(i) for i in ids]
    moves, _ = Router(LeastConnections(), prefetch=2).route(keyed(["k"]), nodes)
    assert moves == [("j0", third)]


def test_rendezvous_score_is_stable_across_processes_and_runs() -> None:
    """blake2b, not Python's salted hash(): this number holds in every process."""
    assert rendezvous_score("user-42", "n1") == 6785272808181817087


def test_load_cap_lets_every_node_of_an_idle_fleet_take_one() -> None:
    assert load_cap(total_load=0, n_nodes=10, epsilon=0.25) == 1
    assert load_cap(total_load=99, n_nodes=10, epsilon=0.25) == 13


def test_a_burst_on_a_thousand_idle_nodes_takes_each_node_once_in_id_order() -> None:
    """Equal expected delays everywhere: ties go by node id, and each placement makes its node
    the longest wait, so a thousand jobs visit the thousand nodes once each, in id order."""
    router = Router(ShortestExpectedDelay(), max_node_queue=0)
    ids = [f"n{i:04d}" for i in range(1000)]
    moves, after = router.route(jobs(1000), [node(i) for i in reversed(ids)])
    assert [n for _, n in moves] == ids
    assert {n.load for n in after} == {1}


def test_a_job_goes_only_to_nodes_of_its_backend() -> None:
    """Forwarded OpenAI requests go to forwarder nodes only, Python jobs never there, whichever
    looks emptier; an OpenAI job with no forwarder waits in the ingress."""
    nodes = [node("py", capacity=4), node("fw", capacity=4, backend=OPENAI)]
    router = Router(LeastConnections(), prefetch=0)
    jobs = [(f"o{i}", JobSpec(func="", backend=OPENAI)) for i in range(3)] + [("p0", JobSpec(func=""))]
    moves, _ = router.route(jobs, nodes)
    assert moves == [("o0", "fw"), ("o1", "fw"), ("o2", "fw"), ("p0", "py")]
    assert router.route([("o9", JobSpec(func="", backend=OPENAI))], [node("py")])[0] == []
    assert needs_spec(needs_field(JobSpec(func="x:y", backend=OPENAI))).backend == OPENAI
    assert needs_field(JobSpec(func="x:y")) == ""  # a Python job's needs stay empty: the common case


def test_a_forwarded_request_goes_only_to_servers_that_list_its_model() -> None:
    """Given the one forwarder whose server lists the model full, a request for that model waits
    in the ingress rather than spill to a forwarder whose server does not serve it (a Python
    node may load a model cold; a forwarder cannot)."""
    nodes = [node("emb", capacity=1, backend=OPENAI, models=("minilm",)),
             node("chat", capacity=4, backend=OPENAI, models=("llama",))]  # fmt: skip
    request = JobSpec(func="", model="minilm", backend=OPENAI)
    moves, _ = Router(LeastConnections(), prefetch=0).route(jobs(3, request), nodes)
    assert moves == [("j0", "emb")]
    nobody = JobSpec(func="", model="gpt-x", backend=OPENAI)
    assert Router(LeastConnections(), prefetch=0).route(jobs(1, nobody), nodes)[0] == []


def test_runs_that_ended_free_a_full_node_between_reads() -> None:
    """Placements count as load until the next read; ends taken off meanwhile open the node again."""
    router = Router(LeastConnections(), prefetch=2)
    nodes = [node("a"), node("b", running=1, queued=2)]
    moves, nodes = router.route(jobs(4), nodes)
    assert [n for _, n in moves] == ["a", "a", "a"]  # a is full (3), b was full: the 4th waits
    assert router.free_room(nodes) == 0
    nodes = router.ended(nodes, {"b": 2, "gone": 5})  # a node the read did not bring: ignored
    assert router.free_room(nodes) == 2
    assert [(n.node_id, n.queued, n.running) for n in nodes] == [("a", 3, 0), ("b", 0, 1)]  # the queue moved up
    moves, nodes = router.route(jobs(3), nodes)
    assert [n for _, n in moves] == ["b", "b"]
    nodes = router.ended(nodes, {"a": 9})  # more than it held: never below zero
    assert [(n.node_id, n.load) for n in nodes] == [("a", 0), ("b", 3)]
    moves, _ = router.route(jobs(1), nodes)
    assert [n for _, n in moves] == ["a"]


def test_an_end_re_ranks_nodes_for_the_next_job() -> None:
    """After an end, the next job with no needs goes to the node the policy now prefers."""
    router = Router(LeastConnections(), prefetch=8)
    moves, nodes = router.route(jobs(4), [node("a"), node("b")])
    assert [n for _, n in moves] == ["a", "b", "a", "b"]
    nodes = router.ended(nodes, {"b": 2})
    moves, _ = router.route(jobs(2), nodes)
    assert [n for _, n in moves] == ["b", "b"]


def test_a_node_faster_than_dispatch_holds_more_and_is_refilled_in_batches() -> None:
    """Jobs of 1 ms, a dispatch round of 1 ms: refilling job by job would cost a round per job,
    so a full node takes work again only when 10 are free (a round is then 10% of their run
    time), and holds 3 more for the round's latency (twice what a slot ends meanwhile, plus
    one): 1 + 13 in all."""
    router = Router(LeastConnections(), prefetch=2, dispatch_latency_s=0.001)
    fast, slow = node("fast", service_time_s=0.001), node("slow", service_time_s=0.5)
    assert (router.limit(fast), router.refill_step(fast)) == (14, 10)
    assert (router.limit(slow), router.refill_step(slow)) == (3, 1)  # the plain prefetch: refilled job by job
    assert router.limit(node("tiny", service_time_s=1e-6)) == 1 + MAX_LATENCY_PREFETCH
    assert router.limit(node("wide", capacity=4, service_time_s=0.004)) == 4 + 3 + (2 * 1 + 1)  # 4 slots x 1/4
    moves, nodes = router.route(jobs(20), [fast])
    assert len(moves) == 14
    nodes = router.ended(nodes, {"fast": 9})
    assert router.free_room(nodes) == 0  # 5 of 14 held: not yet
    nodes = router.ended(nodes, {"fast": 1})
    assert router.free_room(nodes) == 10
    moves, nodes = router.route(jobs(20), nodes)
    assert len(moves) == 10 and router.free_room(nodes) == 0
    assert Router(LeastConnections(), prefetch=2).limit(fast) == 3  # latency unknown: the plain prefetch


def test_a_full_fleet_says_how_soon_a_node_takes_work_again() -> None:
    """The dispatcher waits part of that before it looks again, so a node refilled in batches
    costs a round per refill, not one per job that ends before it reopens."""
    router = Router(LeastConnections(), prefetch=2, dispatch_latency_s=0.001)
    fast = node("fast", service_time_s=0.001, running=1, queued=13)  # full (14); reopens at 4 held
    slow = node("slow", service_time_s=0.5, capacity=2, running=2, queued=2)  # full (4); reopens at 3
    assert math.isclose(router.time_to_room([fast, slow._replace(alive=False)]), 0.010)  # 10 more ends at 1 ms
    assert router.time_to_room([fast, slow]) == 0.0  # each end of a node refilled job by job may reopen it
    assert router.time_to_room([fast, node("idle")]) == 0.0  # one has room
    assert router.time_to_room([slow._replace(alive=False)]) == 0.0  # none accepting: nothing to expect
