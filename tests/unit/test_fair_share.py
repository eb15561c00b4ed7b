"""Weighted fair queueing between tenants and between a tenant's batches (routing/fair_share.py)."""

from __future__ import annotations

from collections import Counter

from gpufleet.dispatcher.routing.fair_share import Backlog, FairShare, level


def by_tenant(lanes: dict[str, str], taken: dict[str, int]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for batch, n in taken.items():
        counts[lanes[batch]] += n
    return counts


def run_rounds(fair: FairShare, lanes: dict[str, str], rounds: int, n: int,
               weights: dict[str, float] | None = None) -> Counter[str]:  # fmt: skip
    """Plan and charge `rounds` times, every lane holding more than ever asked for."""
    total: Counter[str] = Counter()
    for _ in range(rounds):
        taken = fair.plan(Backlog(lanes), n, weights or {}, {})
        fair.charge(lanes, taken, weights or {})
        total += by_tenant(lanes, taken)
    return total


def test_equal_tenants_share_equally_and_weights_split_in_proportion() -> None:
    lanes = {"a1": "A", "b1": "B"}
    assert by_tenant(lanes, FairShare().plan(Backlog(lanes), 100, {}, {})) == {"A": 50, "B": 50}
    assert by_tenant(lanes, FairShare().plan(Backlog(lanes), 100, {"A": 3.0}, {})) == {"A": 75, "B": 25}
    assert run_rounds(FairShare(), lanes, 100, 4, {"A": 3.0}) == {"A": 300, "B": 100}


def test_a_lone_tenant_takes_everything() -> None:
    assert FairShare().plan(Backlog({"a1": "A"}), 40, {}, {}) == {"a1": 40}


def test_a_newcomer_starts_level_with_those_already_served_and_banks_no_credit() -> None:
    fair = FairShare()
    run_rounds(fair, {"a1": "A"}, 50, 20)  # A alone took 1,000 jobs
    lanes = {"a1": "A", "b1": "B"}
    assert by_tenant(lanes, fair.plan(Backlog(lanes), 10, {}, {})) == {"A": 5, "B": 5}  # not all 10 to B
    fair.charge(lanes, {"a1": 5, "b1": 5}, {})
    fair.plan(Backlog({"a1": "A"}), 10, {}, {})  # B has no work now: forgotten
    assert "B" not in fair.tenant_time
    fair.charge({"a1": "A"}, {"a1": 500}, {})
    assert by_tenant(lanes, fair.plan(Backlog(lanes), 10, {}, {})) == {"A": 5, "B": 5}  # idle time banked nothing


def test_batches_of_one_tenant_share_its_part_equally() -> None:
    fair = FairShare()
    run_rounds(fair, {"a1": "A", "b1": "B"}, 10, 100)
    lanes = {"a1": "A", "a2": "A", "b1": "B"}
    assert fair.plan(Backlog(lanes), 100, {}, {}) == {"b1": 50, "a1": 25, "a2": 25}


def test_quota_room_caps_a_tenant_and_its_share_goes_to_the_others() -> None:
    lanes = {"a1": "A", "b1": "B"}
    assert FairShare().plan(Backlog(lanes), 20, {}, {"A": 3}) == {"a1": 3, "b1": 17}
    assert FairShare().plan(Backlog(lanes), 20, {}, {"A": 0, "B": 0}) == {}


def test_known_depths_bound_what_a_lane_is_asked_for() -> None:
    lanes = {"a1": "A", "b1": "B", "b2": "B"}
    plan = FairShare().plan(Backlog(lanes, {"a1": 2, "b2": 0}), 10, {}, {})
    assert plan == {"a1": 2, "b1": 8}


def test_charge_counts_what_was_taken_not_what_was_planned() -> None:
    fair = FairShare()
    lanes = {"a1": "A", "b1": "B"}
    fair.plan(Backlog(lanes), 10, {}, {})
    fair.charge(lanes, {"a1": 1, "b1": 5}, {})  # A's lane held only 1
    assert fair.tenant_time == {"A": 1.0, "B": 5.0}
    assert by_tenant(lanes, fair.plan(Backlog(lanes), 4, {}, {})) == {"A": 4}  # A catches up first


def test_levelling_gives_what_one_job_at_a_time_to_the_least_time_gives() -> None:
    """`level` against the plain one-by-one rule, on random times, weights and caps."""
    import random

    rng = random.Random(7)
    for _ in range(300):
        keys = [f"k{i}" for i in range(rng.randint(1, 6))]
        times = {k: rng.choice([0.0, 0.5, 1.0, rng.uniform(0, 5)]) for k in keys}
        weights = {k: rng.choice([1.0, 2.0, 3.0, 0.5]) for k in keys}
        caps = {k: rng.choice([None, 0, 1, 3, 10]) for k in keys}
        n = rng.randint(0, 40)
        at, given, left = dict(times), dict.fromkeys(keys, 0), n
        while left:
            open_keys = [k for k in keys if caps[k] is None or given[k] < caps[k]]
            if not open_keys:
                break
            k = min(open_keys, key=lambda k: (at[k], k))
            given[k], at[k], left = given[k] + 1, at[k] + 1 / weights[k], left - 1
        got = level(times, weights, caps, n)
        assert sum(got.values()) == sum(given.values())
        assert all(caps[k] is None or got.get(k, 0) <= caps[k] for k in keys)
        assert all(abs(got.get(k, 0) - given[k]) <= 1 for k in keys), (times, weights, caps, n, got, given)


def test_a_round_of_many_tenants_serves_those_furthest_behind_and_the_shares_hold_over_rounds() -> None:
    """100 tenants, 160 jobs a round: a round serves 10 of them, 16 jobs each, those of least
    virtual time first; in 10 rounds every tenant got its 16, none twice and none starved."""
    lanes = {f"b{i:03d}": f"t{i:03d}" for i in range(100)}
    fair = FairShare()
    served: list[Counter[str]] = []
    for _ in range(10):
        taken = fair.plan(Backlog(lanes), 160, {}, {})
        fair.charge(lanes, taken, {})
        served.append(by_tenant(lanes, taken))
    assert all(len(s) == 10 and set(s.values()) == {16} for s in served)
    assert sum(served, Counter()) == Counter(dict.fromkeys(lanes.values(), 16))
