"""Parses and validates job files (JSON Lines): one JobSpec per line, or a JobFileError that
names the line and the field. Streams: one line in memory at a time.

Line format (DESIGN.md): {"input": any, "func"?: "module:function", "id"?: str|int,
"model"?: str, "affinity"?: str, "priority"?: "high|normal|low", "timeout"?: seconds,
"retries"?: int >= 0, "gpu_mem"?: GiB >= 0}
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import IO, Any

from .errors import JobFileError
from .keys import PRIORITIES
from .models import JobSpec

MAX_LINE_BYTES = 8 * 1024 * 1024  # one job's input; larger payloads belong in object storage
FIELDS = ("input", "func", "id", "model", "affinity", "priority", "timeout", "retries", "gpu_mem")
_FUNC_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")


def check_func(func: str) -> str | None:
    """Why `func` ("module:function") cannot be run, or None if it resolves to a callable here."""
    if not _FUNC_RE.match(func):
        return f"{func!r} is not of the form 'module:function' (e.g. 'worker.tasks:echo')"
    return _resolve_error(func)


@lru_cache(maxsize=256)
def _resolve_error(func: str) -> str | None:
    module_name, attr = func.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        return f"module {module_name!r} cannot be imported here ({e})"
    if not callable(getattr(module, attr, None)):
        return f"{module_name!r} has no function {attr!r}"
    return None


def func_path(func: str) -> str:
    """rq's dotted form of 'module:function' ('module.function')."""
    return func.replace(":", ".")


def parse_line(text: str, *, source: str, line_no: int, default_func: str | None, default_priority: str) -> JobSpec:
    """One validated JobSpec from one JSON line."""

    def fail(field: str | None, message: str) -> JobFileError:
        return JobFileError(source, line_no, field, message)

    try:
        obj = json.loads(text)
    except ValueError as e:
        raise fail(None, f"not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise fail(None, f"expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - set(FIELDS))
    if unknown:
        raise fail(unknown[0], f"unknown field (known: {', '.join(FIELDS)})")
    if "input" not in obj:
        raise fail("input", "missing (every job needs an input, even null)")

    func = obj.get("func", default_func)
    if func is None:
        raise fail("func", "missing, and no --func default was given")
    if not isinstance(func, str):
        raise fail("func", "must be a string 'module:function'")
    if (why := check_func(func)) is not None:
        raise fail("func", why)

    client_id = obj.get("id")
    if client_id is not None and (isinstance(client_id, bool) or not isinstance(client_id, (str, int))):
        raise fail("id", "must be a string or an integer")
    if client_id == "":
        raise fail("id", "must not be empty")

    priority = obj.get("priority", default_priority)
    if priority not in PRIORITIES:
        raise fail("priority", f"{priority!r} is not one of {', '.join(PRIORITIES)}")

    return JobSpec(
        func=func,
        input=obj["input"],
        client_id=None if client_id is None else str(client_id),
        model=_optional_str(obj, "model", fail),
        affinity=_optional_str(obj, "affinity", fail),
        priority=priority,
        timeout_s=_number(obj, "timeout", fail, integer=True, minimum=1),
        retries=_number(obj, "retries", fail, integer=True, minimum=0) or 0,
        gpu_mem_gib=float(_number(obj, "gpu_mem", fail, integer=False, minimum=0) or 0.0),
    )


def read_jobs(
    stream: IO[bytes], *, source: str, default_func: str | None = None, default_priority: str = "normal"
) -> Iterator[JobSpec]:
    """Every job of a JSON Lines byte stream, validated; blank lines are skipped. Client ids
    must be unique in the file (the set of ids seen is the only state kept)."""
    seen_ids: dict[str, int] = {}
    line_no = 0
    while True:
        raw = stream.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        line_no += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise JobFileError(source, line_no, None, f"line longer than {MAX_LINE_BYTES // 2**20} MiB")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise JobFileError(source, line_no, None, f"not valid UTF-8 (byte {e.start})") from None
        if not text.strip():
            continue
        spec = parse_line(
            text, source=source, line_no=line_no, default_func=default_func, default_priority=default_priority
        )
        if spec.client_id is not None:
            if spec.client_id in seen_ids:
                raise JobFileError(
                    source, line_no, "id", f"{spec.client_id!r} already used on line {seen_ids[spec.client_id]}"
                )
            seen_ids[spec.client_id] = line_no
        yield spec


def _optional_str(obj: dict[str, Any], name: str, fail: Any) -> str | None:
    value = obj.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise fail(name, "must be a non-empty string")
    return value


def _number(obj: dict[str, Any], name: str, fail: Any, *, integer: bool, minimum: float) -> Any:
    value = obj.get(name)
    if value is None:
        return None
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise fail(name, f"must be {'an integer' if integer else 'a number'}")
    if value < minimum:
        raise fail(name, f"must be >= {minimum:g}")
    return value
