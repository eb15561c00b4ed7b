"""A node's shared counters: batches, and models loaded in any slot."""

from __future__ import annotations

import pytest

from gpufleet.worker.stats import NodeStats


def test_a_batch_counts_as_many_jobs_each_taking_the_batch_time() -> None:
    t = [0.0]
    stats = NodeStats(initial_service_time_s=0.5, clock=lambda: t[0])
    stats.saw_batch_size(32)
    stats.job_started(0, count=10)
    assert stats.view().running == 10
    t[0] = 2.0
    stats.job_ended(2.0, True, 0, count=9)
    stats.job_ended(2.0, False, 0, count=1)
    view = stats.view()
    assert (view.running, view.completed, view.failed, view.batch_max) == (0, 9, 1, 32)
    assert view.service_time_s > 0.5  # moved towards the batch's 2 s
    assert stats.totals().duration_sum_s == pytest.approx(20.0)


def test_models_loaded_in_any_slot_reach_the_one_heartbeat() -> None:
    stats = NodeStats(slots=2)
    stats.add_models({"llama"})
    stats.add_models({"minilm", "llama"})
    assert stats.models() == {"llama", "minilm"}
