"""Speed classes and their thresholds: the chain's means against closed forms, the best rule
against an independent value iteration of the full control problem, and the router's gates."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Collection

import pytest

from gpufleet.dispatcher.routing.models import JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import RESOLVE_MIN_READS, ShortestExpectedDelay, SpeedThresholds
from gpufleet.dispatcher.routing.router import Router
from gpufleet.dispatcher.routing.thresholds import best_thresholds, mean_jobs, speed_classes

MIXED_RATES, MIXED_SLOTS = (8.0, 4.0, 2.0, 1.0), (1, 1, 2, 4)  # speeds 1,1,1,1,2,2,4,8 by class


def jobs(n: int) -> list[tuple[str, JobSpec]]:
    return [(f"j{i}", JobSpec(func="m:f")) for i in range(n)]


def test_one_class_is_the_m_m_c_queue() -> None:
    assert mean_jobs((1.0,), (1,), 0.5, (1,)) == pytest.approx(1.0, rel=1e-8)  # M/M/1: rho / (1 - rho)
    assert mean_jobs((1.0,), (2,), 1.0, (1,)) == pytest.approx(4 / 3, rel=1e-8)  # M/M/2 at rho 0.5
    assert mean_jobs((1.0,), (1,), 1.0, (1,)) == float("inf")


def optimal_mean_jobs(mu_fast: float, mu_slow: float, arrival: float, qmax: int = 80) -> float:
    """The optimal long-run mean number in system for one fast and one slow server, whatever
    the control (leave a server idle or not, at every state): relative value iteration of the
    uniformised MDP, the queue cut at qmax. Independent of thresholds.py: no threshold form
    assumed."""
    total = arrival + mu_fast + mu_slow
    states = [(q, f, s) for q in range(qmax + 1) for f in (0, 1) for s in (0, 1)]
    h = dict.fromkeys(states, 0.0)

    def decided(q: int, f: int, s: int) -> float:  # the best start decisions from (q, f, s)
        best = h[(q, f, s)]
        if q and not f:
            best = min(best, decided(q - 1, 1, s))
        if q and not s:
            best = min(best, decided(q - 1, f, 1))
        return best

    gain = 0.0
    for _ in range(20_000):
        new = {}
        for q, f, s in states:
            up = decided(min(q + 1, qmax), f, s)
            value = (q + f + s) / total + arrival / total * up
            value += mu_fast / total * (decided(q, 0, s) if f else h[(q, f, s)])
            value += mu_slow / total * (decided(q, f, 0) if s else h[(q, f, s)])
            new[(q, f, s)] = value
        ref = new[(0, 0, 0)]
        diffs = [new[k] - h[k] for k in states]
        h = {k: v - ref for k, v in new.items()}
        gain = ref
        if max(diffs) - min(diffs) < 1e-10:
            break
    return gain * total


@pytest.mark.parametrize(("mu_fast", "mu_slow", "arrival"), [(4.0, 1.0, 1.5), (4.0, 1.0, 4.0), (10.0, 1.0, 3.0)])
def test_the_best_threshold_is_the_optimal_control_for_two_servers(mu_fast: float, mu_slow: float,
                                                                   arrival: float) -> None:  # fmt: skip
    """Lin & Kumar: for one fast and one slow server the optimum is a threshold rule; the one
    found matches a value iteration that assumes no rule at all."""
    found = best_thresholds((mu_fast, mu_slow), (1, 1), arrival)
    assert found[0] == 1
    assert mean_jobs((mu_fast, mu_slow), (1, 1), arrival, found) == pytest.approx(
        optimal_mean_jobs(mu_fast, mu_slow, arrival), rel=1e-4)  # fmt: skip


def test_the_slow_server_waits_for_a_queue_when_it_is_much_slower() -> None:
    assert best_thresholds((10.0, 1.0), (1, 1), 3.0)[1] > 1
    assert best_thresholds((1.1, 1.0), (1, 1), 1.5) == (1, 1)  # nearly equal: use both at once


@pytest.mark.parametrize(("load", "thresholds", "x_central"),
                         [(0.5, (1, 1, 2, 5), 0.8158), (0.9, (1, 1, 2, 3), 0.9753)])  # fmt: skip
def test_the_mixed_fleet_of_the_issue(load: float, thresholds: tuple[int, ...], x_central: float) -> None:
    """Speeds 1,1,1,1,2,2,4,8: the speed-2 nodes wait for 2 jobs, the speed-1 nodes for 5 at load
    0.5 and 3 at 0.9; the mean time in system is 0.816x and 0.975x the central queue's (the
    figures of issue 16's independent MDP solution)."""
    arrival = load * 20
    assert best_thresholds(MIXED_RATES, MIXED_SLOTS, arrival) == thresholds
    central = mean_jobs(MIXED_RATES, MIXED_SLOTS, arrival, (1, 1, 1, 1))
    assert mean_jobs(MIXED_RATES, MIXED_SLOTS, arrival, thresholds) / central == pytest.approx(x_central, abs=1e-4)


def test_a_large_fleet_is_solved_scaled_down_quickly() -> None:
    found = best_thresholds((4.0, 2.0, 1.0), (200, 300, 500), 0.9 * 1900)
    assert len(found) == 3 and found[0] == 1 and list(found) == sorted(found)


def test_speed_classes_group_nodes_within_a_ratio_of_the_fastest() -> None:
    classes = speed_classes([("a", 8.0, 1), ("b", 7.0, 2), ("c", 4.0, 1), ("d", 1.1, 1), ("e", 1.0, 3)])
    assert [c.node_ids for c in classes] == [("a", "b"), ("c",), ("d", "e")]
    assert [c.slots for c in classes] == [3, 1, 4]
    assert classes[0].rate == pytest.approx((8 + 14) / 3)


def mixed_fleet(busy: Collection[str] = ()) -> list[NodeState]:
    speeds = {"s8": 8.0, "s4": 4.0, "s2a": 2.0, "s2b": 2.0, "s1a": 1.0, "s1b": 1.0, "s1c": 1.0, "s1d": 1.0}
    return [NodeState(node_id=i, service_time_s=1 / s, running=int(i in busy)) for i, s in speeds.items()]


def gated_router() -> Router:
    return Router(SpeedThresholds(), prefetch=0, arrival_rate=0.5 * 20)


def test_a_slower_class_takes_work_only_while_its_threshold_of_jobs_wait() -> None:
    """Load 0.5: the speed-2 nodes wait for 2 jobs, the speed-1 nodes for 5. With the fast two
    busy, one job waits for them; of 2, one starts on a speed-2 node; of 7, both speed-2 nodes
    and one speed-1 node take one each (7 -> 6 -> 5 waiting, then 4 < 5 closes the speed-1 class)."""
    busy = {"s8", "s4"}
    assert gated_router().route(jobs(1), mixed_fleet(busy))[0] == []
    assert gated_router().route(jobs(1), mixed_fleet(busy), waiting=1)[0] == [("j0", "s2a")]
    moves, _ = gated_router().route(jobs(7), mixed_fleet(busy))
    assert sorted(n for _, n in moves) == ["s1a", "s2a", "s2b"]
    assert gated_router().route(jobs(1), mixed_fleet())[0] == [("j0", "s8")]  # idle: the fastest


def test_jobs_queued_on_nodes_count_as_waiting() -> None:
    """Two jobs queued behind the fast node's run are waiting too: with one more, the speed-2
    class's threshold (2) is met."""
    nodes = [n._replace(queued=2) if n.node_id == "s8" else n for n in mixed_fleet({"s8", "s4"})]
    router = Router(SpeedThresholds(), prefetch=0, max_node_queue=0, arrival_rate=10.0)
    assert router.route(jobs(1), nodes)[0] == [("j0", "s2a")]


def test_a_class_reopens_when_more_jobs_wait_in_a_later_round() -> None:
    router = gated_router()
    nodes = mixed_fleet({"s8", "s4"})
    moves, nodes = router.route(jobs(1), nodes)
    assert moves == []
    moves, nodes = router.route(jobs(2), nodes)  # the same placement state carries on, with 2 waiting
    assert moves == [("j0", "s2a")]


def test_on_a_fleet_of_one_speed_the_gates_are_off_and_routing_is_shortest_expected_delay() -> None:
    rng = random.Random(4)
    for _ in range(30):
        nodes = [NodeState(node_id=f"n{i}", service_time_s=rng.uniform(0.8, 1.0), running=rng.randint(0, 1),
                           queued=rng.randint(0, 2), capacity=rng.randint(1, 3))
                 for i in range(rng.randint(1, 9))]  # fmt: skip
        gated = Router(SpeedThresholds(), arrival_rate=rng.uniform(0.1, 5))
        plain = Router(ShortestExpectedDelay())
        batch = jobs(rng.randint(1, 20))
        assert gated.route(batch, nodes) == plain.route(batch, nodes)
        assert not gated.gated


def test_the_thresholds_are_solved_again_only_when_the_fleet_or_the_load_moved() -> None:
    policy = SpeedThresholds()
    nodes = mixed_fleet()
    assert policy.gates(nodes, 0.0) == {}  # no rate measured yet: nothing held back, nothing kept
    assert policy.gates(nodes, 10.0) == {"s2a": 2, "s2b": 2, "s1a": 5, "s1b": 5, "s1c": 5, "s1d": 5}
    jittered = [n._replace(service_time_s=n.service_time_s * 1.1) for n in nodes]
    assert policy.gates(jittered, 10.2) == policy.gates(nodes, 10.0)  # within the hysteresis: kept
    assert Counter(policy.gates(nodes, 18.0).values()) == {2: 2, 5: 4}  # load 0.9, but solved just now
    for _ in range(RESOLVE_MIN_READS):
        policy.gates(nodes, 18.0)
    assert Counter(policy.gates(nodes, 18.0).values()) == {2: 2, 3: 4}  # solved again: the speed-1 nodes at 3
    fewer = nodes[:-1]  # a node left: solved at once, for the load of now (load 0.5: the speed-1 nodes at 5)
    assert Counter(policy.gates(fewer, 10.0).values()) == {2: 2, 5: 3}


def test_on_a_mixed_fleet_a_slow_node_with_a_few_short_runs_does_not_outrank_a_faster_one() -> None:
    """A speed-1 node whose EWMA just read 0.4 s (a few short runs) scores by its smoothed rate,
    so an idle speed-2 node still goes first; shortest-expected-delay takes the reading as it is."""
    policy = SpeedThresholds()
    nodes = mixed_fleet()
    for _ in range(50):
        policy.gates(nodes, 10.0)
    lucky = [n._replace(service_time_s=0.4) if n.node_id == "s1a" else n for n in nodes]
    busy = [n._replace(running=1) if n.node_id in ("s8", "s4") else n for n in lucky]
    assert Router(policy, prefetch=0, arrival_rate=10.0).route(jobs(1), busy, waiting=4)[0] == [("j0", "s2a")]
    assert Router(ShortestExpectedDelay(), prefetch=0).route(jobs(1), busy)[0] == [("j0", "s1a")]
