"""Parses and validates job files (JSON Lines): one JobSpec per line, or a JobFileError that
names the line and the field. Streams: one line in memory at a time. `check_specs` holds the
JobSpecs of the Python API to the same rules, so both accept the same jobs.

Line format (DESIGN.md): {"input": any, "func"?: "module:function", "id"?: str|int,
"model"?: str, "affinity"?: str, "priority"?: "high|normal|low", "timeout"?: seconds,
"retries"?: int >= 0, "gpu_mem"?: GiB >= 0}
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import IO, Any, NoReturn

from ..errors import JobFileError
from ..routing.models import JobSpec
from ..store.keys import PRIORITIES

MAX_LINE_BYTES = 8 * 1024 * 1024  # one job's input; larger payloads belong in object storage
FIELDS = ("input", "func", "id", "model", "affinity", "priority", "timeout", "retries", "gpu_mem")
_KNOWN = frozenset(FIELDS)
_FUNC_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_MAX_FLOAT = sys.float_info.max
_SPEC_FIELDS = {"id": "client_id", "timeout": "timeout_s", "gpu_mem": "gpu_mem_gib"}  # JobSpec's names


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not -_MAX_FLOAT <= value <= _MAX_FLOAT:
        raise ValueError(f"{text} is too large for a float")
    return value


# Python's json reads NaN and Infinity (and turns 1e999 into inf), then writes them back as
# NaN/Infinity, which is not JSON: `results` would print lines no JSON parser reads. A custom
# parse_float costs only on lines that hold floats; one decoder, built once, for every line.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)


@lru_cache(maxsize=256)
def check_func(func: str) -> str | None:
    """Why `func` is not of the form "module:function", or None if it is.

    Only the syntax: the submitting process need not be able to import the job's module (a
    client sends work to GPU hosts that have packages it lacks), and importing it here would
    run its import-time code. Whether the function exists, and may run, is the worker's to
    decide (store/job.py `allowed_function`); a job naming a missing one fails there with the
    worker's error."""
    if not _FUNC_RE.match(func):
        return f"{func!r} is not of the form 'module:function' (e.g. 'gpufleet.worker.tasks:echo')"
    return None


def parse_line(text: str, *, source: str, line_no: int, default_func: str | None, default_priority: str) -> JobSpec:
    """One validated JobSpec from one JSON line."""
    return JobSpec(*_parse(text, source, line_no, default_func, default_priority))


def decode_object(text: str, source: str, line_no: int) -> dict[str, Any]:
    """One line's JSON object (no NaN or Infinity), or the JobFileError naming the line."""
    try:
        obj = _DECODER.decode(text)
    except ValueError as e:
        why = "it starts with a UTF-8 BOM" if text.startswith("\ufeff") else e
        raise JobFileError(source, line_no, None, f"not valid JSON ({why})") from None
    if not isinstance(obj, dict):
        raise JobFileError(source, line_no, None, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _parse(text: str, source: str, line_no: int, default_func: str | None, default_priority: str) -> tuple[Any, ...]:
    """parse_line's work: JobSpec's fields, in its order, without building one."""
    obj = decode_object(text, source, line_no)
    if "input" not in obj or len(obj) > 1:  # a line with only "input" needs no more checks
        _check_fields(obj, source, line_no)
    try:
        return (
            _func(obj.get("func", default_func)),
            obj["input"],
            _client_id(obj.get("id")),
            _optional_str(obj.get("model"), "model"),
            _optional_str(obj.get("affinity"), "affinity"),
            _priority(obj.get("priority", default_priority)),
            _number(obj.get("timeout"), "timeout", integer=True, minimum=1),
            _number(obj.get("retries"), "retries", integer=True, minimum=0) or 0,
            float(_number(obj.get("gpu_mem"), "gpu_mem", integer=False, minimum=0) or 0.0),
        )  # JobSpec's order: func, input, client_id, model, affinity, priority, timeout_s, retries, gpu_mem_gib
    except _FieldError as e:
        raise JobFileError(source, line_no, e.field, e.message) from None


class _FieldError(Exception):
    """A field's value is refused; parse_line adds the file and line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field, self.message = field, message


def _check_fields(obj: dict[str, Any], source: str, line_no: int) -> None:
    unknown = sorted(obj.keys() - _KNOWN)
    if unknown:
        raise JobFileError(source, line_no, unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    if "input" not in obj:
        raise JobFileError(source, line_no, "input", "missing (every job needs an input, even null)")


def _func(func: Any) -> str:
    if func is None:
        raise _FieldError("func", "missing, and no --func default was given")
    if not isinstance(func, str):
        raise _FieldError("func", "must be a string 'module:function'")
    if (why := check_func(func)) is not None:
        raise _FieldError("func", why)
    return func


def _client_id(client_id: Any) -> str | None:
    if client_id is None:
        return None
    if isinstance(client_id, bool) or not isinstance(client_id, (str, int)):
        raise _FieldError("id", "must be a string or an integer")
    if client_id == "":
        raise _FieldError("id", "must not be empty")
    return str(client_id)


def _priority(priority: Any) -> str:
    if priority not in PRIORITIES:
        raise _FieldError("priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}")
    return priority  # type: ignore[no-any-return]


def read_jobs(
    stream: IO[bytes], *, source: str, default_func: str | None = None, default_priority: str = "normal"
) -> Iterator[JobSpec]:
    """Every job of a JSON Lines byte stream, validated; blank lines are skipped. Client ids
    must be unique in the file (the set of ids seen is the only state kept)."""
    for _, fields in _read(stream, source, default_func, default_priority):
        yield JobSpec(*fields)


def numbered_jobs(
    stream: IO[bytes], *, source: str, default_func: str | None = None, default_priority: str = "normal"
) -> Iterator[tuple[int, JobSpec]]:
    """read_jobs, each job with its line number (for messages that name the line)."""
    for line_no, fields in _read(stream, source, default_func, default_priority):
        yield line_no, JobSpec(*fields)


def count_jobs(
    stream: IO[bytes], *, source: str, default_func: str | None = None, default_priority: str = "normal"
) -> int:
    """How many jobs read_jobs would yield; raises the error it would raise. Builds no JobSpec."""
    return sum(1 for _ in _read(stream, source, default_func, default_priority))


def iter_lines(stream: IO[bytes], source: str) -> Iterator[tuple[int, str]]:
    """The non-blank lines of a JSON Lines byte stream as (line number, text), one in memory at
    a time; a line over MAX_LINE_BYTES or not UTF-8 is a JobFileError naming it."""
    line_no = 0
    while raw := stream.readline(MAX_LINE_BYTES + 1):
        line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise JobFileError(source, line_no, None, f"line longer than {MAX_LINE_BYTES // 2**20} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JobFileError(source, line_no, None, f"not valid UTF-8 (byte {e.start})") from None
        if not text.isspace():
            yield line_no, text


def _read(
    stream: IO[bytes], source: str, default_func: str | None, default_priority: str
) -> Iterator[tuple[int, tuple[Any, ...]]]:
    seen_ids: dict[str, int] = {}
    for line_no, text in iter_lines(stream, source):
        fields = _parse(text, source, line_no, default_func, default_priority)
        if (client_id := fields[2]) is not None:
            if client_id in seen_ids:
                raise JobFileError(source, line_no, "id", f"{client_id!r} already used on line {seen_ids[client_id]}")
            seen_ids[client_id] = line_no
        yield line_no, fields


def _optional_str(value: Any, name: str) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise _FieldError(name, "must be a non-empty string")
    return value


def _number(value: Any, name: str, *, integer: bool, minimum: float, optional: bool = True) -> Any:
    if value is None and optional:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise _FieldError(name, f"must be {'an integer' if integer else 'a number'}")
    if not integer and not -_MAX_FLOAT <= value <= _MAX_FLOAT:  # NaN compares false
        raise _FieldError(name, "must be a finite number")
    if value < minimum:
        raise _FieldError(name, f"must be >= {minimum:g}")
    return value


def check_specs(specs: Iterable[JobSpec], *, source: str = "jobs") -> None:
    """Raise the JobFileError that a job file would give for the first spec (counted from 1)
    that no line of a job file could have produced. Client ids must be unique among `specs`."""
    seen_ids: dict[str, int] = {}
    for i, spec in enumerate(specs, 1):
        try:
            _check_spec(spec)
        except _FieldError as e:
            raise JobFileError(source, i, _SPEC_FIELDS.get(e.field, e.field), e.message) from None
        if spec.client_id is not None:
            client_id = str(spec.client_id)  # stored as text: 7 and "7" are the same id
            if client_id in seen_ids:
                raise JobFileError(source, i, "client_id", f"{client_id!r} already used by job {seen_ids[client_id]}")
            seen_ids[client_id] = i


def _check_spec(spec: JobSpec) -> None:
    """A line's checks, field by field in JobSpec's order, on a JobSpec built in Python."""
    _func(spec.func)
    _input(spec.input)
    _client_id(spec.client_id)
    _optional_str(spec.model, "model")
    _optional_str(spec.affinity, "affinity")
    _priority(spec.priority)
    _number(spec.timeout_s, "timeout", integer=True, minimum=1)
    _number(spec.retries, "retries", integer=True, minimum=0, optional=False)
    _number(spec.gpu_mem_gib, "gpu_mem", integer=False, minimum=0, optional=False)


def _input(value: Any) -> None:
    """A parsed line's input is JSON already; one built in Python must become JSON, all of it."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise _FieldError("input", f"must be JSON, with no NaN or Infinity ({e})") from None
