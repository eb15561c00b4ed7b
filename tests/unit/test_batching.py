"""The pure part of dynamic batching: the @batched mark, its checks, and per-job results."""

from __future__ import annotations

import pytest

from gpufleet.worker.batching import BatchResultError, BatchSpec, batch_spec, batched, per_job_results
from gpufleet.worker.tasks import echo, synthetic_batched


def test_batched_marks_the_function_and_leaves_it_callable() -> None:
    @batched(max_size=8, max_wait_ms=2)
    def double(xs: list[int]) -> list[int]:
        return [2 * x for x in xs]

    assert batch_spec(double) == BatchSpec(8, 2)
    assert double([1, 2]) == [2, 4]
    assert batch_spec(echo) is None
    assert batch_spec(synthetic_batched) == BatchSpec(32, 5)


@pytest.mark.parametrize(("size", "wait"), [(0, 1), (4, -1)])
def test_a_bad_batch_spec_is_refused_where_the_task_is_defined(size: int, wait: float) -> None:
    with pytest.raises(ValueError, match="batched"):
        batched(max_size=size, max_wait_ms=wait)


def test_results_must_be_one_per_input() -> None:
    assert per_job_results((1, ValueError("x")), 2)[0] == 1
    with pytest.raises(BatchResultError, match="3 inputs, 2 results"):
        per_job_results([1, 2], 3)
    with pytest.raises(BatchResultError, match="returned str"):
        per_job_results("ab", 2)


def test_a_batched_synthetic_call_fails_only_the_inputs_that_ask_to() -> None:
    out = synthetic_batched([{"cost": 0, "i": 0}, {"cost": 0, "fail": True}])
    assert out[0]["input"] == {"cost": 0, "i": 0} and isinstance(out[1], RuntimeError)
