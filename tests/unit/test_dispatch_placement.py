"""The router's fast placement (the policy's Ranking kept from job to job, a tally of placements
beside the records, state carried from round to round) makes the very choices of the plain
algorithm: ask the policy about every job over the nodes with room."""

from __future__ import annotations

import random
from typing import Any

import pytest

from gpufleet.dispatcher.routing.affinity import pick_affine
from gpufleet.dispatcher.routing.models import JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import (
    POLICY_NAMES,
    LowestScore,
    ShortestExpectedDelay,
    eligible,
    make_policy,
    ranking_of,
)
from gpufleet.dispatcher.routing.router import Router

PLAIN = JobSpec(func="m:f")


def node(node_id: str, **fields: Any) -> NodeState:
    return NodeState(node_id=node_id, **fields)


def plain_route(router: Router, jobs: list[tuple[str, JobSpec]], nodes: list[NodeState],
                held: dict[str, int] | None = None) -> tuple[list[tuple[str, str]], list[NodeState]]:  # fmt: skip
    """The reference: every job sees the nodes with room and the policy picks among them."""
    state = {n.node_id: n for n in nodes}
    count = dict(held) if held is not None else None
    moves = []
    for job_id, job in jobs:
        room = [n for n in state.values()
                if router.has_room(n, None if count is None else count.get(n.node_id, n.load))]  # fmt: skip
        node_id = None
        if job.affinity is not None and room:
            ring = eligible(job, list(state.values()))
            node_id = pick_affine(job.affinity, ring, {n.node_id for n in room}, router.affinity_epsilon)
        if node_id is None:
            node_id = router.policy.choose(job, room)
        if node_id is None:
            continue
        moves.append((job_id, node_id))
        if count is not None:
            count[node_id] = count.get(node_id, state[node_id].load) + 1
        state[node_id] = state[node_id].with_extra_load(1)
    return moves, list(state.values())


def random_fleet(rng: random.Random, n: int) -> list[NodeState]:
    return [node(f"n{i:03d}", capacity=rng.randint(1, 4), queued=rng.randint(0, 4), running=rng.randint(0, 2),
                 service_time_s=rng.choice([0.25, 0.5, 1.0, 1.0, 2.0]), draining=rng.random() < 0.1,
                 alive=rng.random() > 0.1, gpu_mem_free_gib=rng.choice([float("inf"), 4.0, 16.0, -1.0]),
                 models=("llama",) if rng.random() < 0.2 else ())
            for i in rng.sample(range(n * 3), n)]  # fmt: skip


def random_jobs(rng: random.Random, n: int, mixed: bool) -> list[tuple[str, JobSpec]]:
    jobs = []
    for j in range(n):
        k = rng.random() if mixed else 1.0
        spec = (JobSpec(func="m:f", model="llama") if k < 0.1 else
                JobSpec(func="m:f", affinity=f"s{j % 7}") if k < 0.2 else
                JobSpec(func="m:f", gpu_mem_gib=8.0) if k < 0.25 else PLAIN)  # fmt: skip
        jobs.append((f"j{j}", spec))
    return jobs


def twin_routers(policy: str, max_node_queue: int | None, seed: int
                 ) -> tuple[random.Random, Router, Router, list[NodeState]]:  # fmt: skip
    """The scenario's random source, the router under test and the reference one (same policy,
    same seed), and a random fleet."""
    rng = random.Random(seed)
    fast = Router(make_policy(policy, rng=random.Random(seed)), max_node_queue=max_node_queue)
    plain = Router(make_policy(policy, rng=random.Random(seed)), max_node_queue=max_node_queue)
    return rng, fast, plain, random_fleet(rng, rng.choice([1, 5, 40]))


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("max_node_queue", [None, 0, 3])
@pytest.mark.parametrize("mixed", [False, True])
def test_every_policy_places_as_the_plain_algorithm_does(policy: str, max_node_queue: int | None, mixed: bool) -> None:
    """Round after round over the list the router returned (state carried on), sometimes with
    fresh counts (`held`), plain and mixed jobs: the same moves and node states, every seed."""
    for seed in range(4):
        rng, fast, plain, nodes = twin_routers(policy, max_node_queue, seed)
        mine, theirs = nodes, nodes
        for round_no in range(6):
            jobs = random_jobs(rng, rng.randint(0, 60), mixed)
            held = {n.node_id: max(0, n.load - 1) for n in nodes[::2]} if round_no == 3 else None
            moves, mine = fast.route(jobs, mine, held=held)
            expected, theirs = plain_route(plain, jobs, theirs, held)
            assert moves == expected
            assert mine == theirs


@pytest.mark.parametrize("policy", POLICY_NAMES)
@pytest.mark.parametrize("max_node_queue", [None, 3])
def test_runs_that_end_between_rounds_leave_the_placement_as_a_fresh_read_would(policy: str,
                                                                               max_node_queue: int | None) -> None:
    """Ends taken off the carried state (Router.ended: tally, room, ranking re-scored or
    rebuilt) leave it placing as the plain algorithm does over the records with those ends
    taken off, round after round."""
    for seed in range(4):
        rng, fast, plain, nodes = twin_routers(policy, max_node_queue, seed)
        mine, theirs = nodes, nodes
        for _ in range(6):
            jobs = random_jobs(rng, rng.randint(0, 60), mixed=True)
            moves, mine = fast.route(jobs, mine)
            expected, theirs = plain_route(plain, jobs, theirs)
            assert moves == expected
            ended = {n.node_id: rng.randint(0, 3) for n in theirs if rng.random() < 0.5}
            mine = fast.ended(mine, ended)
            theirs = [n.with_extra_load(max(0, n.load - ended.get(n.node_id, 0)) - n.load) for n in theirs]
            assert mine == theirs


def test_a_route_changes_none_of_the_records_it_was_given_or_handed_out() -> None:
    """Records cannot change (no __dict__ to write); the router's own tally carries the counts."""
    router = Router(ShortestExpectedDelay(), max_node_queue=0)
    given = [node(x) for x in "abc"]
    with pytest.raises(AttributeError):
        given[0].queued = 5  # type: ignore[misc]
    assert not hasattr(given[0], "__dict__")
    _, first = router.route([("j0", PLAIN), ("j1", PLAIN), ("j2", PLAIN), ("j3", PLAIN)], given)
    _, second = router.route([(f"k{i}", PLAIN) for i in range(9)], first)
    assert [n.load for n in given] == [0, 0, 0]
    assert [n.load for n in first] == [2, 1, 1]
    assert [n.load for n in second] == [5, 4, 4]


def test_a_list_changed_in_place_is_not_taken_for_the_one_handed_out() -> None:
    """The caller swaps a node for a full one inside the list it got back: routing sees it."""
    router = Router(ShortestExpectedDelay(), prefetch=0)
    _, nodes = router.route([], [node("a"), node("b")])
    nodes[0] = node("a", running=1)  # a is full now (capacity 1, prefetch 0)
    moves, _ = router.route([("j0", PLAIN), ("j1", PLAIN)], nodes)
    assert moves == [("j0", "b")]


def test_free_room_counts_what_accepting_nodes_may_still_take() -> None:
    router = Router(ShortestExpectedDelay(), prefetch=1)
    nodes = [node("a", capacity=2, queued=1), node("b", running=1), node("c", draining=True), node("d", queued=5)]
    assert router.free_room(nodes) == 2 + 1 + 0  # a: 3 - 1; b: 2 - 1; c not accepting; d over its bound
    _, after = router.route([("j0", PLAIN)], nodes)
    assert router.free_room(after) == 2
    assert Router(ShortestExpectedDelay(), max_node_queue=0).free_room(nodes) is None


def test_only_a_plain_lowest_score_choice_may_keep_a_ranking() -> None:
    class Contrary(ShortestExpectedDelay):
        def choose(self, job: JobSpec, nodes: Any) -> str | None:
            return max(nodes, key=lambda n: self.score(n, n.load)).node_id if nodes else None

    assert ranking_of(ShortestExpectedDelay()) is not None
    assert ranking_of(Contrary()) is None
    assert ranking_of(make_policy("power-of-two")) is None
    assert all(isinstance(make_policy(name), LowestScore) == (ranking_of(make_policy(name)) is not None)
               for name in POLICY_NAMES)  # fmt: skip
    router = Router(Contrary(), max_node_queue=0)
    moves, _ = router.route([("j0", PLAIN)], [node("a"), node("b", queued=3)])
    assert moves == [("j0", "b")]
