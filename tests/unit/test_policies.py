"""Policies on hand-built node states: filter, score, pick, and ties by node id."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from gpufleet.dispatcher.errors import SettingsError
from gpufleet.dispatcher.routing.models import JobSpec, NodeState
from gpufleet.dispatcher.routing.policies import (
    DEFAULT_POLICY,
    POLICY_NAMES,
    LeastConnections,
    LoadAware,
    PowerOfTwo,
    Ranking,
    RoundRobin,
    ShortestExpectedDelay,
    ShortestResponseTime,
    WeightedRoundRobin,
    candidates,
    eligible,
    expected_delay_s,
    make_policy,
)
from gpufleet.dispatcher.settings import Settings

JOB = JobSpec(func="m:f")


def node(node_id: str, **fields: Any) -> NodeState:
    """A node with defaults and only the fields the scenario is about."""
    return NodeState(node_id=node_id, **fields)


def test_eligible_skips_dead_draining_and_short_of_memory_nodes() -> None:
    nodes = [node("a", alive=False), node("b", draining=True), node("c", gpu_mem_free_gib=4.0), node("d")]
    assert [n.node_id for n in eligible(JobSpec(func="m:f", gpu_mem_gib=8.0), nodes)] == ["d"]


def test_job_naming_a_model_prefers_nodes_that_hold_it() -> None:
    nodes = [node("a"), node("b", models=("llama",)), node("c", models=("llama", "bert"))]
    assert [n.node_id for n in candidates(JobSpec(func="m:f", model="llama"), nodes)] == ["b", "c"]


def test_job_naming_a_model_nobody_holds_goes_anywhere() -> None:
    nodes = [node("a"), node("b", models=("bert",))]
    assert [n.node_id for n in candidates(JobSpec(func="m:f", model="llama"), nodes)] == ["a", "b"]


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_honours_model_affinity(name: str) -> None:
    """Given one warm node among busier cold ones, every policy sends the model's jobs there."""
    nodes = [node("a", queued=0), node("b", queued=5, models=("llama",)), node("c", queued=0)]
    policy = make_policy(name, rng=random.Random(0))
    picks = {policy.choose(JobSpec(func="m:f", model="llama"), nodes) for _ in range(20)}
    assert picks == {"b"}


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_leaves_the_job_when_no_node_is_eligible(name: str) -> None:
    policy = make_policy(name, rng=random.Random(0))
    assert policy.choose(JOB, [node("a", alive=False), node("b", draining=True)]) is None
    assert policy.choose(JOB, []) is None


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_every_policy_never_picks_a_draining_node(name: str) -> None:
    policy = make_policy(name, rng=random.Random(0))
    nodes = [node("a", draining=True, weight=100.0, service_time_s=0.01), node("b", queued=3)]
    assert {policy.choose(JOB, nodes) for _ in range(20)} == {"b"}


def test_least_connections_breaks_ties_by_node_id() -> None:
    nodes = [node("c", queued=1), node("b", running=1), node("a", queued=1), node("d", queued=2)]
    assert LeastConnections().choose(JOB, nodes) == "a"


def test_shortest_expected_delay_breaks_ties_by_node_id() -> None:
    nodes = [node("b"), node("a"), node("c")]
    assert ShortestExpectedDelay().choose(JOB, nodes) == "a"


def test_shortest_expected_delay_queues_on_a_fast_node_rather_than_start_on_a_slow_one() -> None:
    """An idle node at 1 s per job finishes later than a fast one at 0.125 s with 2 ahead."""
    nodes = [node("slow", service_time_s=1.0), node("fast", service_time_s=0.125, running=1, queued=1)]
    assert ShortestExpectedDelay().choose(JOB, nodes) == "fast"


def test_shortest_expected_delay_counts_slots() -> None:
    """Four jobs on a four-slot node wait less than one on a single-slot node of equal speed."""
    nodes = [node("one", capacity=1, running=1), node("four", capacity=4, running=3)]
    assert ShortestExpectedDelay().choose(JOB, nodes) == "four"


def test_shortest_response_time_picks_the_lowest_ewma_then_fewer_jobs() -> None:
    nodes = [node("a", service_time_s=2.0), node("b", service_time_s=0.5, queued=3),
             node("c", service_time_s=0.5, queued=1)]  # fmt: skip
    assert ShortestResponseTime().choose(JOB, nodes) == "c"


@pytest.mark.parametrize("policy", [LeastConnections(), ShortestResponseTime(), ShortestExpectedDelay()])
def test_a_ranking_tops_with_the_lowest_score_as_loads_change(policy: Any) -> None:
    """Random loads given to random nodes one at a time, some dropped: the top is always the
    minimum of score(node, its load now) over the nodes still in, first in node order on a tie."""
    rng = random.Random(7)
    nodes = [node(f"n{i}", capacity=rng.randint(1, 3), queued=rng.randint(0, 3),
                  service_time_s=rng.choice([0.5, 1.0])) for i in rng.sample(range(50), 12)]  # fmt: skip
    ranking = Ranking(policy.score, nodes)
    load = {n.node_id: n.load for n in nodes}
    by_id = {n.node_id: n for n in nodes}
    for _ in range(200):
        expected = min(load, key=lambda i: policy.score(by_id[i], load[i])) if load else None
        assert ranking.lowest() == expected
        if not load:
            break
        node_id = expected if rng.random() < 0.5 else rng.choice(sorted(load))
        if rng.random() < 0.05:
            ranking.drop(node_id)
            del load[node_id]
        else:
            load[node_id] = max(0, load[node_id] + rng.choice([-1, 1, 1, 2]))
            ranking.rescore(node_id, load[node_id])
    assert all((i in ranking) == (i in load) for i in by_id)


def test_round_robin_takes_nodes_in_turn_by_id() -> None:
    rr = RoundRobin()
    nodes = [node("c"), node("a"), node("b")]
    assert [rr.choose(JOB, nodes) for _ in range(5)] == ["a", "b", "c", "a", "b"]


def test_round_robin_skips_a_node_that_left_without_owing_it_a_turn() -> None:
    rr = RoundRobin()
    assert rr.choose(JOB, [node("a"), node("b"), node("c")]) == "a"
    assert rr.choose(JOB, [node("a"), node("c")]) == "c"
    assert rr.choose(JOB, [node("a"), node("b"), node("c")]) == "a"


def test_smooth_weighted_round_robin_interleaves_in_weight_proportion() -> None:
    """nginx's example: weights 5, 1, 1 give a a b a c a a, not five a's in a row."""
    wrr = WeightedRoundRobin()
    nodes = [node("a", weight=5.0), node("b", weight=1.0), node("c", weight=1.0)]
    assert "".join(str(wrr.choose(JOB, nodes)) for _ in range(7)) == "aabacaa"
    assert Counter(wrr.choose(JOB, nodes) for _ in range(700)) == {"a": 500, "b": 100, "c": 100}


def test_weighted_round_robin_never_picks_a_zero_weight_node() -> None:
    wrr = WeightedRoundRobin()
    nodes = [node("a", weight=0.0), node("b", weight=1.0)]
    assert {wrr.choose(JOB, nodes) for _ in range(5)} == {"b"}


def test_power_of_two_samples_in_proportion_to_service_rate() -> None:
    """One node 8x faster than two others, all equally loaded: sampling by rate puts the fast
    node in nearly every pair (the two slow ones are drawn together with p = 2/10 * 1/9),
    where uniform sampling would miss it one time in three."""
    p2 = PowerOfTwo(random.Random(1))
    nodes = [node("s1"), node("s2"), node("fast", service_time_s=0.125)]
    picks = Counter(p2.choose(JOB, nodes) for _ in range(4000))
    assert picks["fast"] / 4000 > 0.95


def test_power_of_two_takes_the_shorter_expected_delay_of_its_pair() -> None:
    p2 = PowerOfTwo(random.Random(0))
    assert {p2.choose(JOB, [node("a", queued=4), node("b", queued=1)]) for _ in range(20)} == {"b"}


def test_power_of_two_is_repeatable_for_a_seed() -> None:
    nodes = [node(f"n{i}", queued=i % 3, service_time_s=1.0 / (1 + i % 4)) for i in range(10)]
    p, q = PowerOfTwo(random.Random(7)), PowerOfTwo(random.Random(7))
    assert [p.choose(JOB, nodes) for _ in range(50)] == [q.choose(JOB, nodes) for _ in range(50)]


@pytest.mark.parametrize(("alpha", "beta", "gamma"),
                         [(-0.1, 0.3, 0.1), (0.6, -1.0, 0.1), (0.6, 0.3, 0.0), (0.6, 0.3, -1.0)])  # fmt: skip
def test_load_aware_refuses_negative_alpha_beta_or_non_positive_gamma(alpha: float, beta: float, gamma: float) -> None:
    with pytest.raises(SettingsError):
        make_policy("load-aware", alpha=alpha, beta=beta, gamma=gamma)


def test_load_aware_draws_in_proportion_to_its_weight() -> None:
    """Idle weight 1/0.1 = 10 against busy 1/(0.6 + 0.3 + 0.1) = 1: about 10 picks to 1."""
    la = LoadAware(rng=random.Random(3))
    nodes = [node("busy", gpu_util=1.0, mem_util=1.0), node("idle")]
    picks = Counter(la.choose(JOB, nodes) for _ in range(11_000))
    assert 8.5 < picks["idle"] / picks["busy"] < 11.5


def test_load_aware_weighs_a_forwarders_kv_cache_use() -> None:
    """Same GPU figures, one server's KV cache full: weight 1/(0.1 + 0.5) against 1/0.1, so the
    full one gets about 1 pick in 7; with kv=0 both weigh the same. A negative kv is refused."""
    la = LoadAware(rng=random.Random(5))
    nodes = [node("full", kv_cache_usage=1.0), node("empty")]
    assert la.weight(nodes[0]) == pytest.approx(1 / 0.6) and la.weight(nodes[1]) == pytest.approx(10.0)
    picks = Counter(la.choose(JOB, nodes) for _ in range(7_000))
    assert 5.0 < picks["empty"] / picks["full"] < 7.5
    assert LoadAware(kv=0.0).weight(nodes[0]) == LoadAware(kv=0.0).weight(nodes[1])
    with pytest.raises(SettingsError, match="kv"):
        make_policy("load-aware", kv=-0.1)


def test_expected_delay_counts_the_requests_waiting_in_a_forwarders_server() -> None:
    """Two forwarders, same speed and load; one server has 6 requests in its own queue: one
    more request finishes sooner on the other, and the delay counts them as load."""
    nodes = [node("busy-server", capacity=4, service_time_s=1.0, server_waiting=6),
             node("idle-server", capacity=4, service_time_s=1.0)]  # fmt: skip
    assert ShortestExpectedDelay().choose(JOB, nodes) == "idle-server"
    assert expected_delay_s(nodes[0], 0) == pytest.approx(7 / 4) and expected_delay_s(nodes[1], 0) == 0.25


def test_make_policy_knows_every_name_and_defaults_to_speed_thresholds() -> None:
    assert [make_policy(name).name for name in POLICY_NAMES] == list(POLICY_NAMES)
    assert DEFAULT_POLICY == "speed-thresholds" == Settings().policy


def test_unknown_policy_names_the_choices() -> None:
    with pytest.raises(SettingsError, match="power-of-two"):
        make_policy("fastest")
