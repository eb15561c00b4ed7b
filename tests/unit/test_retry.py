"""Retry backoff: doubling from the base, jittered, and never past the cap."""

from __future__ import annotations

import random

from gpufleet.dispatcher.fleet.retry import retry_delay_s

BASE_S, CAP_S = 1.0, 60.0
SEEDS = range(200)


def delays(attempt: int) -> list[float]:
    """The delay after `attempt` under each seed (one rng per seed, as one worker has one)."""
    return [retry_delay_s(attempt, base_s=BASE_S, cap_s=CAP_S, rng=random.Random(seed)) for seed in SEEDS]


def test_no_delay_exceeds_the_cap_whatever_the_attempt_or_the_jitter() -> None:
    for seed in SEEDS:
        rng = random.Random(seed)
        for attempt in range(1, 21):
            assert 0 < retry_delay_s(attempt, base_s=BASE_S, cap_s=CAP_S, rng=rng) <= CAP_S


def test_the_top_of_the_jitter_range_still_stays_within_the_cap() -> None:
    """0.5 + random() rounds up to exactly 1.5 for random()'s largest values."""

    class Highest(random.Random):
        def random(self) -> float:
            return 1 - 2**-53

    assert retry_delay_s(20, base_s=BASE_S, cap_s=CAP_S, rng=Highest()) <= CAP_S


def test_small_attempts_keep_the_full_jitter_spread_around_base_times_two_to_the_n() -> None:
    for attempt, nominal in [(1, 1.0), (2, 2.0), (3, 4.0)]:
        spread = delays(attempt)
        assert all(0.5 * nominal <= d < 1.5 * nominal for d in spread)
        assert min(spread) < 0.6 * nominal and max(spread) > 1.4 * nominal


def test_capped_attempts_are_still_spread_not_stacked_at_the_cap() -> None:
    """Past the cap, failures of one burst must not all come back at the same instant."""
    spread = delays(20)
    assert min(spread) < 0.4 * CAP_S and max(spread) > 0.9 * CAP_S
    assert len({round(d, 3) for d in spread}) > len(SEEDS) // 2
