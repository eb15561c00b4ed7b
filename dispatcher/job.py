"""gpufleet's rq Job: a real rq job (JSON serializer) that also keeps gpufleet's fields.

The extra fields (keys.JobField) ride in rq's job HASH. The bookkeeping hooks below add their
writes to the pipelines rq already runs, so counting attempts and batch progress costs no
extra round trip.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from redis.client import Pipeline
from rq.job import Job
from rq.serializers import JSONSerializer

from .keys import JobField, Keys

SERIALIZER = JSONSerializer  # JSON on the wire, both sides; never pickle


class BatchCounter:
    """Fields of the batch HASH (keys.batch_info) that count terminal outcomes."""

    SIZE = "size"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELED = "canceled"


def wake_dispatcher(pipeline: Pipeline, keys: Keys) -> None:
    """Leave one wake-up token (never more) for a dispatcher waiting in BLPOP."""
    pipeline.rpush(keys.dispatch_wakeup, 1)
    pipeline.ltrim(keys.dispatch_wakeup, 0, 0)


class FleetJob(Job):
    """An rq Job that knows its batch and counts its attempts and outcomes."""

    keys: Keys = Keys()
    allowed_modules: tuple[str, ...] | None = None  # worker side: modules whose functions may run

    @property
    def func(self) -> Any:
        """The job's function, refused before import when its module is not allowed here."""
        name = self.func_name or ""
        if self.allowed_modules is not None and not any(name.startswith(m + ".") for m in self.allowed_modules):
            raise PermissionError(
                f"function {name!r} is not in an allowed module (worker --allow: {', '.join(self.allowed_modules)})"
            )
        return super().func

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("serializer", SERIALIZER)
        super().__init__(*args, **kwargs)
        self.fleet: dict[str, str] = {}

    def restore(self, raw_data: Any) -> Any:
        super().restore(raw_data)
        self.fleet = {
            f.decode(): v.decode()
            for f, v in raw_data.items()
            if f.startswith(b"gf_")
        }

    @property
    def batch_id(self) -> str:
        return self.fleet.get(JobField.BATCH, "")

    def prepare_for_execution(self, worker_name: str, pipeline: Pipeline) -> None:
        super().prepare_for_execution(worker_name, pipeline)
        pipeline.hincrby(self.key, JobField.ATTEMPTS, 1)
        pipeline.hdel(self.key, JobField.ERROR)  # a reason from an earlier attempt no longer applies

    def _handle_success(self, result_ttl: Any, pipeline: Pipeline, *args: Any, **kwargs: Any) -> None:
        super()._handle_success(result_ttl, pipeline, *args, **kwargs)
        self._count(BatchCounter.FINISHED, pipeline)

    def _handle_failure(self, exc_string: str, pipeline: Pipeline, *args: Any, **kwargs: Any) -> None:
        super()._handle_failure(exc_string, pipeline, *args, **kwargs)
        self._count(BatchCounter.FAILED, pipeline)

    def _count(self, counter: str, pipeline: Pipeline) -> None:
        """Count the outcome, and wake the dispatcher: a slot just freed up on this node."""
        wake_dispatcher(pipeline, self.keys)
        if self.batch_id:
            pipeline.hincrby(self.keys.batch_info(self.batch_id), counter, 1)


@lru_cache(maxsize=None)
def job_class(keys: Keys, allowed_modules: tuple[str, ...] | None = None) -> type[FleetJob]:
    """The FleetJob class for one namespace (its batch counters live there) and, on a worker,
    the modules it may run functions from."""
    return type("FleetJob", (FleetJob,), {"keys": keys, "allowed_modules": allowed_modules})
