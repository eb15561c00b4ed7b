"""gpufleet's rq Job: a real rq job (JSON serializer) that also keeps gpufleet's fields.

The extra fields (keys.JobField) ride in rq's job HASH. The bookkeeping hooks below add their
writes to the pipelines rq already runs, so counting attempts and batch progress costs no
extra round trip. `QueuedJobHash` writes a queued job's HASH without building an rq Job.
"""

from __future__ import annotations

import importlib
import inspect
import json
import zlib
from collections.abc import Callable
from functools import cache, lru_cache
from typing import Any

from redis.client import Pipeline
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from ..routing.models import PYTHON, JobSpec
from .keys import DEFAULT_TENANT, JobField, Keys

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


def needs_field(spec: JobSpec) -> str:
    """The job's gf_needs value: what routing must respect, as a JSON object of the needs it
    has (model, affinity, gpu_mem_gib, a backend other than Python's); "" (the field left out)
    when it has none. One field,
    so the dispatcher reads a job's needs with one SORT GET pattern."""
    needs: dict[str, Any] = {}
    if spec.model:
        needs["model"] = spec.model
    if spec.affinity:
        needs["affinity"] = spec.affinity
    if spec.gpu_mem_gib:
        needs["gpu_mem_gib"] = float(spec.gpu_mem_gib)
    if spec.backend != PYTHON:
        needs["backend"] = spec.backend
    return json.dumps(needs, separators=(",", ":")) if needs else ""


def needs_spec(field: str | bytes | None) -> JobSpec:
    """What routing must respect, from a gf_needs value (None or "": nothing). A value that is
    not what needs_field writes counts as no needs: one odd job must not stop routing."""
    try:
        needs = json.loads(field) if field else {}
        return JobSpec(func="", model=needs.get("model") or None, affinity=needs.get("affinity") or None,
                       gpu_mem_gib=float(needs.get("gpu_mem_gib", 0.0)),
                       backend=str(needs.get("backend") or PYTHON))  # fmt: skip
    except (ValueError, TypeError, AttributeError):
        return JobSpec(func="")


class FleetJob(Job):
    """An rq Job that knows its batch and counts its attempts and outcomes."""

    keys: Keys = Keys()
    allowed_modules: tuple[str, ...] | None = None  # worker side: modules whose functions may run

    @property
    def func(self) -> Any:
        """The job's function; on a worker, only a function defined in an allowed module."""
        if self.allowed_modules is None:
            return super().func
        return allowed_function(self.func_name or "", self.allowed_modules)

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

    @property
    def model(self) -> str:
        """The model the job wants warm ("" when none)."""
        return needs_spec(self.fleet.get(JobField.NEEDS)).model or ""

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
        """Count the outcome in its batch (and list the job among the batch's ended ones), and
        wake the dispatcher: a slot just freed up on this node."""
        wake_dispatcher(pipeline, self.keys)
        if self.batch_id:
            pipeline.hincrby(self.keys.batch_info(self.batch_id), counter, 1)
            pipeline.rpush(self.keys.batch_ended(self.batch_id), self.id)


def func_path(func: str) -> str:
    """rq's dotted form of 'module:function' ('module.function')."""
    return func.replace(":", ".")


@lru_cache(maxsize=256)
def allowed_function(func_name: str, allowed_modules: tuple[str, ...]) -> Callable[..., Any]:
    """The function that rq's dotted `func_name` names, if a worker allowed `allowed_modules` may
    run it. Anyone who can write to Redis can write a job HASH, so the worker is the trust
    boundary. rq's import_attribute would follow any attribute path: `gpufleet.worker.tasks.time.sleep`
    would reach the time module that gpufleet.worker.tasks imports. So the name is read as one module plus
    one attribute. The module must be an allowed module or a submodule of one, and that is
    checked before anything is imported. The attribute must be a function whose own __module__ is
    allowed, which refuses `from os import system`. functools.wraps and @batched keep __module__.
    Cached, since it runs once per job; a refusal raises, so it is not cached."""
    allowed = ", ".join(allowed_modules)
    module_name, _, attr = func_name.rpartition(".")
    if not _is_within(module_name, allowed_modules):
        raise PermissionError(f"function {func_name!r} is not in an allowed module (worker --allow: {allowed})")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        on_the_path = _is_within(module_name, (missing,))  # not a module that the module imports
        if not on_the_path or not any(missing.startswith(m + ".") for m in allowed_modules):
            raise  # an allowed module that is not installed, or one of its imports: rq's own error
        raise PermissionError(
            f"function {func_name!r} is refused: {missing!r} is not a module. A job names a function "
            "as module.function; an attribute path after the module (module.a.b) is never followed"
        ) from None
    func = getattr(module, attr)
    if not inspect.isfunction(func):
        raise PermissionError(f"function {func_name!r} is refused: it is a {type(func).__name__}, not a function")
    defined_in = func.__module__ or ""
    if not _is_within(defined_in, allowed_modules):
        raise PermissionError(
            f"function {func_name!r} is refused: it is defined in {defined_in!r}, which is not an allowed "
            f"module (worker --allow: {allowed})"
        )
    return func


def _is_within(module_name: str, modules: tuple[str, ...]) -> bool:
    """Whether `module_name` is one of `modules` or a submodule of one (a dotted-name check, no import)."""
    return any(module_name == m or module_name.startswith(m + ".") for m in modules)


@cache
def job_class(keys: Keys, allowed_modules: tuple[str, ...] | None = None) -> type[FleetJob]:
    """The FleetJob class for one namespace (its batch counters live there) and, on a worker,
    the modules it may run functions from."""
    return type("FleetJob", (FleetJob,), {"keys": keys, "allowed_modules": allowed_modules})


class QueuedJobHash:
    """The HASH of each of a batch's queued jobs: the fields rq's `Job.create(...).to_dict()`
    writes for a queued job, in rq's formats, with the same `data` bytes, plus gpufleet's.

    A queued job waits in its batch's lane of its priority (its `origin`) until the dispatcher
    takes it into the ingress. What does not change from job to job (origin, description, TTLs,
    status, batch, tenant, priority) is formatted once per (func, priority); per job only
    `data`, the timeout and the job's own gpufleet fields are. Left out: rq's fields that are
    empty for a queued job (callbacks, started_at, ended_at, last_heartbeat, worker_name,
    group_id: `Job.restore` reads each with `.get`), and gpufleet fields at their default
    (gf_id, gf_needs when the job needs nothing, gf_retries 0, gf_attempts 0: every reader
    treats a missing gf_ field as its default, and HINCRBY counts from 0).
    """

    def __init__(self, keys: Keys, batch_id: str, result_ttl_s: int, default_timeout_s: int = 180,
                 tenant: str = DEFAULT_TENANT) -> None:  # fmt: skip
        self._keys = keys
        self._batch_id = batch_id
        self._tenant = tenant
        self._ttl = str(result_ttl_s)
        self._default_timeout = str(default_timeout_s)
        self._fixed: dict[tuple[str, str], tuple[str, ...]] = {}  # a few funcs x 3 priorities
        self._frames: dict[str, tuple[str, str]] = {}

    def build(self, job_id: str, spec: JobSpec, stamp: str) -> tuple[str, tuple[Any, ...]]:
        """One job's key and its HASH as (field, value, field, value, ...); `stamp`
        (rq.utils.utcformat) is its created_at and enqueued_at."""
        fixed = self._fixed.get((spec.func, spec.priority)) or self._fixed_fields(spec.func, spec.priority)
        head, tail = self._frames.get(spec.func) or self._frame(spec.func)
        timeout = str(spec.timeout_s) if spec.timeout_s else self._default_timeout
        own: tuple[str, ...] = ()
        if spec.client_id is not None:
            own += (JobField.CLIENT_ID, spec.client_id)
        if needs := needs_field(spec):
            own += (JobField.NEEDS, needs)
        if spec.retries:
            own += (JobField.RETRIES, str(spec.retries))
        data = zlib.compress((head + json.dumps(spec.input) + tail).encode())  # what rq's to_dict stores
        per_job = ("data", data, "created_at", stamp, "enqueued_at", stamp, "timeout", timeout)
        return Keys.rq_job(job_id), per_job + fixed + own

    def _fixed_fields(self, func: str, priority: str) -> tuple[str, ...]:
        fixed = (
            "origin", self._keys.lane_queue(priority, self._batch_id),
            "description", func,
            "result_ttl", self._ttl,
            "failure_ttl", self._ttl,
            "status", JobStatus.QUEUED.value,
            JobField.BATCH, self._batch_id,
            JobField.TENANT, self._tenant,
            JobField.PRIORITY, priority,
        )  # fmt: skip
        self._fixed[(func, priority)] = fixed
        return fixed

    def _frame(self, func: str) -> tuple[str, str]:
        """The text around the argument in rq's `data` for a call with one positional argument:
        SERIALIZER.dumps((func_name, instance, args, kwargs)), i.e. json.dumps(...).encode()."""
        head, tail = json.dumps((func_path(func), None, [_HOLE], {})).split(json.dumps(_HOLE))
        self._frames[func] = (head, tail)
        return head, tail


_HOLE = "\x00gpufleet input\x00"  # never in a function name (jobfile._FUNC_RE)
