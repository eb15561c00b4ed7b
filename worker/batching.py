"""Dynamic batching: mark a task `@batched` and it receives a list of inputs, one per job.

    from gpufleet.worker.batching import batched

    @batched(max_size=32, max_wait_ms=10)
    def embed(texts: list[str]) -> list[list[float]]:
        return model.encode(texts).tolist()

A worker that dequeues a job of a batched task takes up to `max_size` jobs of the same task
and model from its node queue, waiting at most `max_wait_ms` after the first for more to
arrive, runs them as one call and records each job's own result. The call returns one result
per input, in order; an item that is an Exception fails only its own job. An exception raised
by the call fails every job of the batch (each retried as its own retries allow).

This module is the pure part (the mark and the checks); worker/batch_run.py does the I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])
SPEC_ATTR = "gpufleet_batch"  # where @batched leaves its BatchSpec on the function


@dataclass(frozen=True)
class BatchSpec:
    """How a batched task wants its jobs grouped."""

    max_size: int
    max_wait_ms: float

    def __post_init__(self) -> None:
        if self.max_size < 1:
            raise ValueError(f"batched: max_size must be at least 1 (got {self.max_size})")
        if self.max_wait_ms < 0:
            raise ValueError(f"batched: max_wait_ms must be >= 0 (got {self.max_wait_ms})")


def batched(max_size: int = 32, max_wait_ms: float = 10.0) -> Callable[[F], F]:
    """Mark a task as taking a list of up to `max_size` inputs and returning a list of results."""
    spec = BatchSpec(max_size, max_wait_ms)

    def mark(func: F) -> F:
        setattr(func, SPEC_ATTR, spec)
        return func

    return mark


def batch_spec(func: Any) -> BatchSpec | None:
    """The BatchSpec of a task marked @batched, else None."""
    spec = getattr(func, SPEC_ATTR, None)
    return spec if isinstance(spec, BatchSpec) else None


class BatchResultError(TypeError):
    """A batched task returned something other than one result per input."""


def per_job_results(returned: Any, size: int) -> list[Any]:
    """The batched call's return value as one result per job, checked."""
    if isinstance(returned, (str, bytes)) or not isinstance(returned, Sequence):
        raise BatchResultError(f"a batched task must return a list of {size} results, one per input; "
                               f"it returned {type(returned).__name__}")  # fmt: skip
    if len(returned) != size:
        raise BatchResultError(f"a batched task must return one result per input: {size} inputs, "
                               f"{len(returned)} results")  # fmt: skip
    return list(returned)
