"""Job file validation: every bad line is named by number and field, nothing is accepted."""

from __future__ import annotations

import io
import sys

import pytest

from gpufleet.dispatcher.client.jobfile import MAX_LINE_BYTES, check_func, count_jobs, read_jobs
from gpufleet.dispatcher.errors import JobFileError


def parse(text: str | bytes, **kw: object) -> list:
    data = text.encode() if isinstance(text, str) else text
    return list(read_jobs(io.BytesIO(data), source="jobs.jsonl", **kw))  # type: ignore[arg-type]


def error_of(text: str | bytes, **kw: object) -> JobFileError:
    with pytest.raises(JobFileError) as info:
        parse(text, **kw)
    return info.value


def test_a_full_line_becomes_a_jobspec_with_every_field() -> None:
    line = ('{"input": {"x": 1}, "func": "gpufleet.worker.tasks:echo", "id": 7, "model": "m", "affinity": "s1",'
            ' "priority": "high", "timeout": 30, "retries": 2, "gpu_mem": 1.5}\n')  # fmt: skip
    [spec] = parse(line)
    assert (spec.func, spec.input, spec.client_id, spec.model, spec.affinity) == (
        "gpufleet.worker.tasks:echo", {"x": 1}, "7", "m", "s1")  # fmt: skip
    assert (spec.priority, spec.timeout_s, spec.retries, spec.gpu_mem_gib) == ("high", 30, 2, 1.5)


def test_defaults_fill_func_and_priority_and_blank_lines_are_skipped() -> None:
    specs = parse('{"input": 1}\n\n   \n{"input": null}\n', default_func="gpufleet.worker.tasks:echo",
                  default_priority="low")  # fmt: skip
    assert ([(s.func, s.input, s.priority) for s in specs]
            == [("gpufleet.worker.tasks:echo", 1, "low"), ("gpufleet.worker.tasks:echo", None, "low")])  # fmt: skip


@pytest.mark.parametrize(
    "text, line_no, field, words",
    [
        ('{"input": 1}\n{"input": \n', 2, None, "not valid JSON"),
        ('[1, 2]\n', 1, None, "expected a JSON object"),
        ('{"func": "gpufleet.worker.tasks:echo"}\n', 1, "input", "missing"),
        ('{"input": 1, "prio": "high"}\n', 1, "prio", "unknown field"),
        ('{"input": 1, "priority": "urgent"}\n', 1, "priority", "urgent"),
        ('{"input": 1, "timeout": "10"}\n', 1, "timeout", "integer"),
        ('{"input": 1, "timeout": 0}\n', 1, "timeout", ">= 1"),
        ('{"input": 1, "retries": -1}\n', 1, "retries", ">= 0"),
        ('{"input": 1, "retries": true}\n', 1, "retries", "integer"),
        ('{"input": 1, "gpu_mem": "big"}\n', 1, "gpu_mem", "number"),
        ('{"input": 1, "model": 3}\n', 1, "model", "string"),
        ('{"input": 1, "id": [1]}\n', 1, "id", "string or an integer"),
        ('{"input": 1, "id": "a"}\n{"input": 2, "id": "a"}\n', 2, "id", "already used on line 1"),
        ('{"input": 1, "func": "nonsense"}\n', 1, "func", "module:function"),
        ('{"input": 1, "func": "pkg.mod:f:g"}\n', 1, "func", "module:function"),
        ('{"input": 1, "func": "pkg..mod:f"}\n', 1, "func", "module:function"),
        ('{"input": 1, "func": "pkg.mod:1f"}\n', 1, "func", "module:function"),
    ],
)
def test_a_bad_line_is_refused_naming_line_and_field(text: str, line_no: int, field: str | None, words: str) -> None:
    err = error_of(text, default_func="gpufleet.worker.tasks:echo")
    assert (err.line_no, err.field) == (line_no, field)
    assert words in str(err)
    assert str(err).startswith(f"jobs.jsonl:{line_no}") and "nothing was enqueued" in str(err)
    with pytest.raises(JobFileError) as counted:  # the validation pass refuses it the same way
        count_jobs(io.BytesIO(text.encode()), source="jobs.jsonl", default_func="gpufleet.worker.tasks:echo")
    assert str(counted.value) == str(err)


def test_count_jobs_counts_what_read_jobs_yields() -> None:
    text = ('{"input": 1}\n\n{"input": 2, "id": "a", "priority": "low"}\n  \n'
            '{"input": null, "func": "gpufleet.worker.tasks:echo"}\n')  # fmt: skip
    assert count_jobs(io.BytesIO(text.encode()), source="j", default_func="gpufleet.worker.tasks:echo") == 3
    assert len(parse(text, default_func="gpufleet.worker.tasks:echo")) == 3


def test_without_func_anywhere_the_line_is_refused() -> None:
    assert error_of('{"input": 1}\n').field == "func"


def test_invalid_utf8_is_refused_with_its_line() -> None:
    err = error_of(b'{"input": 1}\n{"input": "\xff\xfe"}\n', default_func="gpufleet.worker.tasks:echo")
    assert err.line_no == 2 and "UTF-8" in str(err)


def test_an_oversized_line_is_refused_without_reading_it_whole() -> None:
    big = b'{"input": "' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n'
    err = error_of(b'{"input": 1}\n' + big, default_func="gpufleet.worker.tasks:echo")
    assert err.line_no == 2 and "longer than" in str(err)


def test_check_func_accepts_builtin_tasks() -> None:
    assert check_func("gpufleet.worker.tasks:synthetic") is None


def test_a_func_is_checked_for_its_form_only_and_its_module_is_never_imported() -> None:
    """Resolving the function is the worker's job: a module the submitting machine lacks, or a
    function that does not exist, is accepted here (and fails on the worker with its error)."""
    specs = parse('{"input": 1, "func": "gf_absent_pkg_xyz.infer:run"}\n'
                  '{"input": 2, "func": "gpufleet.worker.tasks:nope"}\n')  # fmt: skip
    assert [s.func for s in specs] == ["gf_absent_pkg_xyz.infer:run", "gpufleet.worker.tasks:nope"]
    assert check_func("gf_absent_pkg_xyz.infer:run") is None
    assert "gf_absent_pkg_xyz" not in sys.modules and "gf_absent_pkg_xyz.infer" not in sys.modules
